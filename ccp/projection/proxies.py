"""Rebuilding a proxy bank from a candidate pool and a cover (SPEC §5.3, §5.4)."""
import tensorflow as tf

from ccp.projection import kcenter


@tf.function
def _k_center_with_figures(pool, cover, k, normalized=False):
    """Graph-mode projection math: new proxies ``[C, k, D]`` and the logged figures."""
    new = kcenter.greedy_k_center(pool, cover, k, normalized=normalized)
    radius_after = kcenter.covering_radius(pool, new)
    return new, {
        "radius_before": tf.reduce_mean(kcenter.covering_radius(pool, cover)),
        "radius_after": tf.reduce_mean(radius_after),
        "radius_after_max": tf.reduce_max(radius_after),
        "proxy_distance_before": tf.reduce_mean(kcenter.mean_proxy_distance(cover)),
        "proxy_distance_after": tf.reduce_mean(kcenter.mean_proxy_distance(new)),
    }


def proxy_bank_shape(proxy_owner):
    """``(C, K, D)`` of a proxy owner's bank, with a clear error for a layer without proxies."""
    try:
        shape = tuple(tf.convert_to_tensor(proxy_owner.proxies_by_class()).shape)
    except AttributeError as error:
        raise TypeError(f"proxy_owner {type(proxy_owner).__name__} has no proxy bank (it must "
                        f"expose proxies_by_class() -> [C, K, D] and assign_proxies()); pass "
                        f"proxy_owner=None for a CCP schedule without proxies") from error
    if len(shape) != 3:
        raise ValueError(f"proxies_by_class() must be [C, K, D], got {shape}")
    return shape


def validated_pool(pool, bank_shape, pool_size=None):
    """The pool as float32 ``[C, P, D]``, checked against the bank ``(C, K, D)``.

    ``P`` must be ``pool_rounds(pool_size, K)`` when ``pool_size`` is given, and every value
    finite (a NaN/inf pool means training diverged).
    """
    pool = tf.convert_to_tensor(pool, tf.float32)
    num_classes, per_class, size = bank_shape
    rounds = None if pool_size is None else kcenter.pool_rounds(pool_size, per_class)
    if (pool.shape.rank != 3 or pool.shape[0] != num_classes or pool.shape[2] != size
            or (rounds is not None and pool.shape[1] != rounds)):
        wanted = "b" if rounds is None else str(rounds)
        raise ValueError(
            f"proxy pool must be [num_classes={num_classes}, {wanted}, embedding_size={size}] "
            f"(pool_size={pool_size}, K={per_class}); got {tuple(pool.shape)}")
    kcenter.check_finite_pool(pool)
    return pool


def rebuild_proxy_bank(proxy_owner, pool, cover, normalized=False):
    """Greedy k-center picks from ``pool`` starting at ``cover`` become the owner's proxies.

    Args:
      proxy_owner: a layer with ``proxies_by_class() -> [C, K, D]`` and ``assign_proxies``.
      pool: float ``[C, P, D]`` raw candidate embeddings (finite).
      cover: float ``[C, M, D]`` starting cover (the instance's best proxies, or ``[C, 1, D]``
        zeros for the initial proxies).
      normalized: greedy k-center on L2-normalized embeddings (kcenter.greedy_k_center).
    Returns:
      dict of the logged figures: ``pool_size``, covering radius and mean proxy distance before
      and after (floats).
    """
    pool = tf.convert_to_tensor(pool, tf.float32)
    kcenter.check_finite_pool(pool)
    per_class = proxy_bank_shape(proxy_owner)[1]
    new, figures = _k_center_with_figures(pool, tf.convert_to_tensor(cover, tf.float32),
                                          per_class, bool(normalized))
    proxy_owner.assign_proxies(new)
    return {"pool_size": int(pool.shape[1]),
            **{key: float(value) for key, value in figures.items()}}
