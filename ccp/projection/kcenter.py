"""Greedy k-center and the covering figures of CCP's projection (SPEC §5): pure tensor functions.

- :func:`greedy_k_center` (public API): per class, ``K`` picks from a candidate pool starting
  from a cover (SPEC §5 "Greedy k-center"), batched over classes, XLA-compilable.
- :func:`covering_radius`, :func:`mean_proxy_distance`: the figures logged at every projection.
- :func:`check_finite_pool`: the eager check that names the classes of a NaN/inf pool.
"""
import numpy as np
import tensorflow as tf


def batched_squared_distances(points, centers):
    """Squared L2 distances within each class, ``relu(|p|^2 + |c|^2 - 2 p.c)``.

    The expansion is one matmul (``[C, P, M]`` memory) but not exact: the same point on both
    sides leaves a rounding residue (up to ~``4 eps |p|^2``, and the matmul kernel's blocking,
    e.g. oneDNN's, decides its size). Where a distance must be exactly 0 use
    :func:`batched_squared_differences` or set it (``mean_proxy_distance`` zeroes its diagonal).

    Args:
      points: float ``[C, P, D]``.
      centers: float ``[C, M, D]``.
    Returns:
      float ``[C, P, M]``.
    """
    sq_points = tf.reduce_sum(tf.square(points), axis=-1)[:, :, None]
    sq_centers = tf.reduce_sum(tf.square(centers), axis=-1)[:, None, :]
    cross = tf.matmul(points, centers, transpose_b=True)
    return tf.nn.relu(sq_points + sq_centers - 2.0 * cross)


def batched_squared_differences(points, centers):
    """Squared L2 distances within each class as ``sum_d (p_d - c_d)^2``: exactly 0 between
    identical rows, and identical rows of ``points`` get identical distances (the same
    element-wise ops on the same values), whatever kernel computes a matmul.

    Memory ``[C, P, D]`` per center: the centers are taken one at a time when ``M`` is static.

    Args:
      points: float ``[C, P, D]``.
      centers: float ``[C, M, D]``.
    Returns:
      float ``[C, P, M]``.
    """
    num = centers.shape[1]
    if num is None:
        return tf.reduce_sum(tf.square(points[:, :, None, :] - centers[:, None, :, :]), axis=-1)
    return tf.stack([tf.reduce_sum(tf.square(points - centers[:, m:m + 1, :]), axis=-1)
                     for m in range(num)], axis=-1)


def _first_argmax(values):
    """``[C, P] -> int32 [C]``: index of the row maximum, the lowest index among ties.

    ``tf.argmax`` does not promise which tie it returns; SPEC §5 asks for the lowest index.
    """
    num = tf.shape(values)[1]
    is_max = tf.equal(values, tf.reduce_max(values, axis=1, keepdims=True))
    indices = tf.broadcast_to(tf.range(num, dtype=tf.int32)[None, :], tf.shape(values))
    return tf.reduce_min(tf.where(is_max, indices, num), axis=1)


def greedy_k_center_indices(candidates, centers, k):
    """Greedy k-center picks as indices (SPEC §5), batched over classes.

    ``dist_i = min_{s in centers} ||q_i - s||^2``; ``k`` times: ``i* = argmax dist`` (lowest index
    among ties), ``dist_i <- min(dist_i, ||q_i - q_{i*}||^2)``. The distances are sums of squared
    differences (:func:`batched_squared_differences`), so duplicate candidates tie exactly and
    the tie goes to the lowest index on any CPU/GPU kernel (the matmul expansion leaves each copy
    a different rounding residue, which would decide instead).

    Args:
      candidates: float ``[C, P, D]``, the pool of each class (``P >= k``).
      centers: float ``[C, M, D]``, the starting cover of each class. ``M`` may be 0: every
        distance starts at ``+inf`` and the first pick is candidate 0.
      k: Python int, the number of picks.
    Returns:
      ``(indices, min_sq_dist)``: int32 ``[C, k]`` picks in pick order, and float ``[C, P]`` the
      final squared distance of each candidate to the starting cover plus the picks.
    Raises:
      ValueError: if the pool (static ``P``) is smaller than ``k``.
    """
    candidates = tf.convert_to_tensor(candidates, tf.float32)
    centers = tf.convert_to_tensor(centers, tf.float32)
    k = int(k)
    if k < 1:
        raise ValueError(f"greedy_k_center needs k >= 1, got {k}")
    if candidates.shape.rank != 3 or centers.shape.rank != 3:
        raise ValueError(
            f"greedy_k_center expects candidates [C, P, D] and centers [C, M, D]; got shapes "
            f"{candidates.shape} and {centers.shape}"
        )
    pool = candidates.shape[1]
    if pool is not None and pool < k:
        raise ValueError(
            f"greedy k-center needs at least k={k} candidates per class, the pool has {pool}; "
            "SPEC §5: when b < K the pool holds b*K candidates"
        )
    if tf.executing_eagerly():
        check_finite_pool(candidates)
    if centers.shape[1] == 0:
        min_dist = tf.fill(tf.shape(candidates)[:2], tf.constant(np.inf, tf.float32))
    else:
        min_dist = tf.reduce_min(batched_squared_differences(candidates, centers), axis=-1)
    picks = []
    # k is small (the proxies per class): an unrolled loop keeps shapes static for XLA/TPU.
    for _ in range(k):
        index = _first_argmax(min_dist)
        picked = tf.gather(candidates, index[:, None], batch_dims=1)  # [C, 1, D]
        new_dist = tf.reduce_sum(tf.square(candidates - picked), axis=-1)
        min_dist = tf.minimum(min_dist, new_dist)
        picks.append(index)
    return tf.stack(picks, axis=1), min_dist


def greedy_k_center(candidates, centers, k, normalized=False):
    """Greedy k-center per class (SPEC §5), batched over classes; public API.

    Starting from the cover ``centers``, repeatedly keeps the candidate farthest (squared L2)
    from everything covered so far; ties go to the lowest candidate index. With an all-zero
    cover ``[C, 1, D]`` (SPEC §5.4) the first pick is the candidate farthest from the origin;
    with an empty cover (``M = 0``) it is candidate 0. Usable in ``tf.function`` and with
    ``jit_compile=True`` (``k`` is a Python int).

    Args:
      candidates: float ``[C, P, D]``, ``P >= k`` candidates per class.
      centers: float ``[C, M, D]``, the starting cover (e.g. the current best proxies).
      k: Python int, the number of picks per class.
      normalized: pick by distances between L2-normalized candidates and cover (the
        reference's ``normalized_embeddings``); the picks returned are the raw candidates.
    Returns:
      float32 ``[C, k, D]``: the picked candidates, in pick order.
    """
    candidates = tf.convert_to_tensor(candidates, tf.float32)
    if normalized:  # an all-zero cover stays zero (l2_normalize's epsilon)
        indices, _ = greedy_k_center_indices(
            tf.math.l2_normalize(candidates, axis=-1),
            tf.math.l2_normalize(tf.convert_to_tensor(centers, tf.float32), axis=-1), k)
        return tf.gather(candidates, indices, batch_dims=1)
    indices, _ = greedy_k_center_indices(candidates, centers, k)
    return tf.gather(candidates, indices, batch_dims=1)


def covering_radius(points, centers):
    """Per class, the largest L2 distance from a point to its nearest center.

    Args:
      points: float ``[C, P, D]``.
      centers: float ``[C, M, D]``, ``M >= 1``.
    Returns:
      float32 ``[C]`` (distances, not squared).
    """
    points = tf.convert_to_tensor(points, tf.float32)
    centers = tf.convert_to_tensor(centers, tf.float32)
    nearest = tf.reduce_min(batched_squared_distances(points, centers), axis=-1)
    return tf.sqrt(tf.reduce_max(nearest, axis=-1))


def mean_proxy_distance(proxies_by_class):
    """Per class, the mean L2 distance between its distinct proxies.

    Args:
      proxies_by_class: float ``[C, K, D]``.
    Returns:
      float32 ``[C]`` (zeros when ``K == 1``).
    """
    proxies = tf.convert_to_tensor(proxies_by_class, tf.float32)
    num = proxies.shape[1]
    if num is None or num < 2:
        return tf.zeros(tf.shape(proxies)[:1], tf.float32)
    # Sums of squared differences, not the |p|^2 + |c|^2 - 2 p.c expansion: that leaves a
    # rounding residue where the distance is 0 (a self-distance of 4.8e-7 becomes 6.9e-4 after
    # the square root); a proxy's distance to itself, or to a copy of itself, is exactly 0.
    dists = tf.sqrt(batched_squared_differences(proxies, proxies))  # [C, K, K]
    return tf.reduce_sum(dists, axis=[1, 2]) / float(num * (num - 1))


def pool_rounds(pool_size, proxies_per_class):
    """Candidates per class a projection needs: ``b``, or ``b * K`` when ``b < K`` (SPEC §5)."""
    pool_size, proxies_per_class = int(pool_size), int(proxies_per_class)
    return pool_size if pool_size >= proxies_per_class else pool_size * proxies_per_class


def check_finite_pool(candidates):
    """Raises a clear error when candidate embeddings ``[C, P, D]`` hold NaN or inf (eager only).

    A non-finite pool comes from a diverged or collapsed model; greedy k-center would otherwise
    fail deep inside a gather with an out-of-range index.
    """
    values = np.asarray(candidates)
    finite = np.isfinite(values).reshape(values.shape[0], -1).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        shown = ", ".join(str(c) for c in bad[:10]) + (", ..." if len(bad) > 10 else "")
        raise ValueError(
            f"greedy k-center got non-finite (NaN/inf) candidate embeddings for {len(bad)} of "
            f"{len(finite)} classes (class indices {shown}): the model embeds the proxy pool to "
            "NaN/inf, i.e. training diverged; lower the learning rate or check the input images")
