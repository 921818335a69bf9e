"""Pair miners of the reference framework: keep a subset of a pair loss's pairs.

Pure functions on matrices (rows anchors, columns references, as every pair loss here):
``(matrix [N, M], pos_mask [N, M] bool, neg_mask [N, M] bool) -> (pos_mask, neg_mask)``, and
small serializable :class:`Miner` objects that a pair loss takes as ``miner=`` (see
``ccp.losses.PairLoss``); a miner then runs in every term of the loss: the batch term, CCP's
sample-vs-proxy term and XBM's memory term. Mining decides WHICH pairs count; it carries no
gradient.

A miner is handed the loss's own pair dissimilarity ``pdist`` (SPEC §4c): the distance of a
distance-based loss (Euclidean, squared, ``-x.y`` with ``distance="cosine"``, SNR) and ``-x.y``
for the cosine losses (C1, MS, Circle). The ranking miners rank by it, as the reference does:
for vectors of norm < 1 (the Lipschitz normalization leaves them so) ``-x.y`` and the Euclidean
distance order the negatives differently.

- :func:`hard_negatives`: per anchor the ``k`` negatives of smallest ``pdist``, ``k`` the largest
  number of positives of any anchor (the reference's ``hardNegatives``).
- :func:`distance_weighted`: Wu et al., "Sampling Matters in Deep Embedding Learning" (ICCV 2017):
  per (anchor, positive) pair one negative drawn with probability proportional to the inverse of
  the density of distances between uniform points on the unit sphere of dimension ``D``; the
  density is one of L2 distances, so this miner measures L2 distances whatever ``pdist`` is.
- :func:`reference_distance_weighted`: the reference's own draw (its ``distanceWeighted``) on the
  loss's ``pdist``; how it differs from the paper's is in its docstring.
- :func:`multi_similarity`: the pair-mining step of the multi-similarity paper (Wang et al. 2019),
  also ``MultiSimilarityLoss(mining=True)``; thresholds on dot-product similarities (the MS
  paper's cosine similarity).
"""
import keras
import tensorflow as tf

from ccp import defaults, ops
from ccp.losses import registered


def hard_negatives(dists, pos_mask, neg_mask):
    """Keeps each anchor's ``k`` hardest (closest) negatives; positives are unchanged.

    ``k = max(1, max_i #positives of anchor i)``. Ties with the ``k``-th distance are kept (as
    the reference's ``>=``); an anchor with fewer than ``k`` negatives keeps them all. (The
    reference ranks ``max_j d_ij - d_ij`` over the whole row, so in that degenerate case it also
    marks non-negative pairs, its own positives, as negatives: not reproduced.)

    Args:
      dists: float ``[N, M]``, the loss's pdist (smaller = harder negative; any dissimilarity,
        e.g. ``-x.y``).
      pos_mask, neg_mask: bool ``[N, M]``.
    Returns:
      ``(pos_mask, neg_mask)`` bool ``[N, M]``.
    """
    dists = tf.stop_gradient(dists)
    num_refs = tf.shape(dists)[1]
    k = tf.reduce_max(tf.reduce_sum(tf.cast(pos_mask, tf.int32), axis=1))
    k = tf.minimum(tf.maximum(k, 1), num_refs)
    keyed = tf.where(neg_mask, dists, tf.constant(float("inf"), dists.dtype))
    smallest = -tf.math.top_k(-keyed, k=k, sorted=True).values  # [N, k] ascending
    kth = smallest[:, -1:]
    return pos_mask, tf.logical_and(neg_mask, keyed <= kth)


def distance_weighted_log_weights(dists, neg_mask, dim, cutoff=0.5, nonzero_loss_cutoff=1.4):
    """Log sampling weights of distance-weighted sampling, ``-inf`` where never drawn.

    ``log q(d)^-1 = (2 - D) log d - (D - 3)/2 log(1 - d^2 / 4)`` with ``d`` clamped below at
    ``cutoff``; negatives at ``d >= nonzero_loss_cutoff`` get weight 0 (they give no loss). A row
    whose negatives all get weight 0 draws uniformly among its negatives (the authors' code).

    Args:
      dists: float ``[N, M]`` L2 distances of unit-ball vectors; neg_mask: bool ``[N, M]``.
      dim: the embedding dimension ``D``.
    Returns:
      float ``[N, M]``.
    """
    dists = tf.stop_gradient(dists)
    clamped = tf.maximum(dists, cutoff)
    eligible = tf.logical_and(neg_mask, clamped < nonzero_loss_cutoff)
    safe = tf.where(eligible, clamped, tf.ones_like(clamped))  # finite logs outside
    log_w = ((2.0 - dim) * tf.math.log(safe)
             - (dim - 3.0) / 2.0 * tf.math.log(1.0 - 0.25 * tf.square(safe)))
    minus_inf = tf.constant(float("-inf"), dists.dtype)
    log_w = tf.where(eligible, log_w, minus_inf)
    none = tf.logical_not(tf.reduce_any(eligible, axis=1, keepdims=True))
    uniform = tf.where(neg_mask, tf.zeros_like(dists), minus_inf)
    return tf.where(none, uniform, log_w)


def _draw_negatives(logits, pos_mask, neg_mask, seed):
    """One categorical draw from ``logits [N, M]`` per (anchor, positive) pair; the negatives
    drawn at least once (a set), limited to ``neg_mask``. A row without negatives draws none."""
    has_neg = tf.reduce_any(neg_mask, axis=1, keepdims=True)
    # A row without negatives must still be a valid distribution for the sampler.
    logits = tf.where(has_neg, logits, tf.zeros_like(logits))
    counts = tf.reduce_sum(tf.cast(pos_mask, tf.int32), axis=1)  # draws per anchor
    draws = tf.maximum(tf.reduce_max(counts), 1)
    picks = tf.random.stateless_categorical(logits, draws, seed=seed, dtype=tf.int32)  # [N, S]
    used = tf.range(draws)[None, :] < counts[:, None]  # [N, S]
    hits = tf.one_hot(picks, tf.shape(logits)[1], dtype=tf.int32)  # [N, S, M]
    hits = hits * tf.cast(used, tf.int32)[..., None]
    drawn = tf.reduce_max(hits, axis=1) > 0
    return tf.logical_and(neg_mask, tf.logical_and(drawn, has_neg))


def distance_weighted(dists, pos_mask, neg_mask, dim, seed, cutoff=0.5, nonzero_loss_cutoff=1.4):
    """Distance-weighted negative sampling (Wu et al. 2017).

    Each anchor draws, with replacement, as many negatives as it has positives (one per
    (anchor, positive) pair) from :func:`distance_weighted_log_weights`; the kept negatives are
    the ones drawn at least once (a set: a negative drawn twice counts once). Positives are
    unchanged. The reference's own draw is :func:`reference_distance_weighted`; this follows the
    paper and its authors' code.

    Args:
      dists: float ``[N, M]`` L2 distances; pos_mask, neg_mask: bool ``[N, M]``.
      dim: embedding dimension ``D``; seed: int ``[2]`` stateless seed.
    Returns:
      ``(pos_mask, neg_mask)`` bool ``[N, M]``.
    """
    log_w = distance_weighted_log_weights(dists, neg_mask, dim, cutoff, nonzero_loss_cutoff)
    return pos_mask, _draw_negatives(log_w, pos_mask, neg_mask, seed)


def reference_distance_weighted_weights(dists, neg_mask, dim, cutoff=0.5,
                                        nonzero_loss_cutoff=1.4):
    """The reference's normalized sampling weights (its ``distanceWeighted``), in ``dists``' dtype.

    ``d = max(pdist, cutoff)``; ``log w = (2 - D) log d - (D - 3)/2 log(1 - d^2 / 4)`` over the
    WHOLE matrix; ``w = exp(log w - max over the whole matrix)`` (one global normalizer, not per
    row: in float32 the weights of far pairs underflow to 0, and a row can lose all of them);
    ``w = 0`` off the negatives and at ``d >= nonzero_loss_cutoff``; each row divided by its sum.
    A row whose weights are all 0 is uniform over its negatives (the reference adds the negative
    mask there but divides by the zero sum: inf/NaN). Entries where ``log w`` is not finite
    (``d >= 2``: pairs the unit ball does not have, or a pdist that is no L2 distance) are left
    out of the maximum and get weight 0.

    Args:
      dists: float ``[N, M]``, the loss's pdist; neg_mask: bool ``[N, M]``; dim: ``D``.
    Returns:
      float ``[N, M]``, rows summing to 1 (0 for a row without negatives).
    """
    dists = tf.stop_gradient(dists)
    clamped = tf.maximum(dists, cutoff)
    inside = clamped < 2.0
    safe = tf.where(inside, clamped, tf.ones_like(clamped))
    log_w = ((2.0 - dim) * tf.math.log(safe)
             - (dim - 3.0) / 2.0 * tf.math.log(1.0 - 0.25 * tf.square(safe)))
    finite = tf.logical_and(inside, tf.math.is_finite(log_w))
    top = tf.reduce_max(tf.where(finite, log_w, tf.constant(float("-inf"), dists.dtype)))
    weights = tf.where(finite, tf.exp(log_w - top), tf.zeros_like(log_w))
    eligible = tf.logical_and(neg_mask, clamped < nonzero_loss_cutoff)
    weights = tf.where(eligible, weights, tf.zeros_like(weights))
    total = tf.reduce_sum(weights, axis=1, keepdims=True)
    negatives = tf.cast(neg_mask, dists.dtype)
    uniform = tf.math.divide_no_nan(negatives, tf.reduce_sum(negatives, axis=1, keepdims=True))
    return tf.where(total > 0.0, weights / tf.where(total > 0.0, total, 1.0), uniform)


def reference_distance_weighted(dists, pos_mask, neg_mask, dim, seed, cutoff=0.5,
                                nonzero_loss_cutoff=1.4):
    """Distance-weighted sampling as the reference draws it (SPEC §4c).

    Per (anchor, positive) pair one column drawn by ``tf.random.categorical`` with the
    normalized weights of :func:`reference_distance_weighted_weights` passed as LOGITS (as the
    reference does), so column ``j`` of row ``i`` comes with probability
    ``exp(w_ij) / sum_k exp(w_ik)`` over ALL ``M`` columns: close to uniform, since ``w <= 1``.
    Differences from the paper's :func:`distance_weighted`: that global normalizer (and the
    float32 underflow it brings), the weights used as logits, and every column drawable.
    The drawn negatives are kept (a set); a drawn column that is not a negative of the anchor
    (itself, a positive, padding) is dropped: the reference would mark it a negative (and count
    a negative drawn twice twice), which pair masks here do not represent. The reference also
    fixes ``D = 128`` and a ``128 x 128`` mask (batch 128 only); here ``D`` is the embedding
    size and any shape works.

    Args:
      dists: float ``[N, M]``, the loss's pdist; pos_mask, neg_mask: bool ``[N, M]``.
      dim: ``D``; seed: int ``[2]`` stateless seed.
    Returns:
      ``(pos_mask, neg_mask)`` bool ``[N, M]``.
    """
    weights = reference_distance_weighted_weights(dists, neg_mask, dim, cutoff,
                                                  nonzero_loss_cutoff)
    return pos_mask, _draw_negatives(weights, pos_mask, neg_mask, seed)


def multi_similarity(sims, pos_mask, neg_mask, epsilon=0.1):
    """The multi-similarity paper's mining (SPEC §4 "MS" option).

    Keeps negatives with ``s > min_pos_s - epsilon`` and positives with ``s < max_neg_s +
    epsilon`` (per anchor row); an anchor without positives keeps no negative and one without
    negatives keeps no positive.

    Args:
      sims: float ``[N, M]`` similarities; pos_mask, neg_mask: bool ``[N, M]``.
    Returns:
      ``(pos_mask, neg_mask)`` bool ``[N, M]``.
    """
    sims = tf.stop_gradient(sims)
    big = tf.constant(1e9, sims.dtype)
    min_pos = tf.reduce_min(tf.where(pos_mask, sims, big), axis=1, keepdims=True)
    max_neg = tf.reduce_max(tf.where(neg_mask, sims, -big), axis=1, keepdims=True)
    neg = tf.logical_and(neg_mask, sims + epsilon > min_pos)
    pos = tf.logical_and(pos_mask, sims - epsilon < max_neg)
    return pos, neg


class Miner(registered.Component):
    """A miner a pair loss applies to its masks:
    ``miner(pdist, x, ref, pos, neg, seed) -> (pos, neg)``.

    ``pdist``: the loss's own pair dissimilarity ``[N, M]`` (smaller = more similar; ``-x.y``
    for cosine losses); ``x``: normalized queries ``[N, D]``; ``ref``: references ``[M, D]`` or
    None (the queries themselves). ``stochastic`` miners get a stateless int64 ``[2]`` seed from
    the loss (its ``seed`` attribute and a checkpointed call counter).
    """

    name = None
    stochastic = False
    seed = 0

    def __call__(self, pdist, embeddings, ref_embeddings, pos_mask, neg_mask, seed=None):
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}({self.get_config()})"


@keras.saving.register_keras_serializable(package="ccp")
class HardNegatives(Miner):
    """:func:`hard_negatives` on the loss's own pdist (the reference's ranking: by ``-x.y`` for
    the cosine losses, by the loss's distance otherwise)."""

    name = "hard_negatives"

    def __call__(self, pdist, embeddings, ref_embeddings, pos_mask, neg_mask, seed=None):
        return hard_negatives(pdist, pos_mask, neg_mask)


class _DistanceWeightedBase(Miner):
    """Cutoffs, seed and configuration of the distance-weighted miners."""

    stochastic = True

    def __init__(self, cutoff=defaults.DISTANCE_WEIGHTED_CUTOFF,
                 nonzero_loss_cutoff=defaults.DISTANCE_WEIGHTED_NONZERO_LOSS_CUTOFF, seed=0):
        self.cutoff, self.nonzero_loss_cutoff = float(cutoff), float(nonzero_loss_cutoff)
        self.seed = int(seed)
        if not 0.0 < self.cutoff < self.nonzero_loss_cutoff <= 2.0:
            raise ValueError(f"{type(self).__name__}: need 0 < cutoff < nonzero_loss_cutoff <= 2, "
                             f"got {cutoff}, {nonzero_loss_cutoff}")

    def _check_seed(self, seed):
        if seed is None:
            raise ValueError(f"{type(self).__name__} needs a seed (the pair loss passes one)")

    def get_config(self):
        return {"cutoff": self.cutoff, "nonzero_loss_cutoff": self.nonzero_loss_cutoff,
                "seed": self.seed}


@keras.saving.register_keras_serializable(package="ccp")
class DistanceWeighted(_DistanceWeightedBase):
    """:func:`distance_weighted` (the paper's) on the L2 distances of the normalized vectors,
    with ``D`` the embedding size; draws from ``seed``."""

    name = "distance_weighted"

    def __call__(self, pdist, embeddings, ref_embeddings, pos_mask, neg_mask, seed=None):
        self._check_seed(seed)
        dists = ops.pairwise_distances(tf.stop_gradient(embeddings),
                                       None if ref_embeddings is None
                                       else tf.stop_gradient(ref_embeddings))
        dim = float(embeddings.shape[-1])
        return distance_weighted(dists, pos_mask, neg_mask, dim, seed, self.cutoff,
                                 self.nonzero_loss_cutoff)


@keras.saving.register_keras_serializable(package="ccp")
class ReferenceDistanceWeighted(_DistanceWeightedBase):
    """:func:`reference_distance_weighted` (the reference's draw) on the loss's pdist, with
    ``D`` the embedding size; draws from ``seed``."""

    name = "distance_weighted_reference"

    def __call__(self, pdist, embeddings, ref_embeddings, pos_mask, neg_mask, seed=None):
        self._check_seed(seed)
        dim = float(embeddings.shape[-1])
        return reference_distance_weighted(pdist, pos_mask, neg_mask, dim, seed, self.cutoff,
                                           self.nonzero_loss_cutoff)


@keras.saving.register_keras_serializable(package="ccp")
class MultiSimilarity(Miner):
    """:func:`multi_similarity` on the dot-product similarities of the normalized embeddings
    (the MS paper's thresholds are in similarity units, whatever the loss's pdist)."""

    name = "multi_similarity"

    def __init__(self, epsilon=defaults.MS_MINING_EPSILON):
        self.epsilon = float(epsilon)

    def __call__(self, pdist, embeddings, ref_embeddings, pos_mask, neg_mask, seed=None):
        sims = ops.pairwise_similarities(embeddings, ref_embeddings)
        return multi_similarity(sims, pos_mask, neg_mask, self.epsilon)

    def get_config(self):
        return {"epsilon": self.epsilon}


REGISTRY = {cls.name: cls for cls in (HardNegatives, DistanceWeighted, ReferenceDistanceWeighted,
                                      MultiSimilarity)}


def get(identifier):
    """None, or a :class:`Miner` from a registered name, a serialized dict or an instance."""
    return registered.resolve(identifier, REGISTRY, Miner, "miner", none_allowed=True)


def serialize(miner):
    """The config form of a miner (what the losses store in ``get_config``)."""
    return keras.saving.serialize_keras_object(miner)
