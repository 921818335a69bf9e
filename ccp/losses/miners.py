"""Pair miners of the reference framework: keep a subset of a pair loss's pairs.

Pure functions on matrices (rows anchors, columns references, as every pair loss here):
``(matrix [N, M], pos_mask [N, M] bool, neg_mask [N, M] bool) -> (pos_mask, neg_mask)``, and
small serializable :class:`Miner` objects that a pair loss takes as ``miner=`` (see
``ccp.losses.PairLoss``); a miner then runs in every term of the loss: the batch term, CCP's
sample-vs-proxy term and XBM's memory term. Mining decides WHICH pairs count; it carries no
gradient.

- :func:`hard_negatives`: per anchor the ``k`` closest negatives, ``k`` the largest number of
  positives of any anchor (the reference's ``hardNegatives``).
- :func:`distance_weighted`: Wu et al., "Sampling Matters in Deep Embedding Learning" (ICCV 2017):
  per (anchor, positive) pair one negative drawn with probability proportional to the inverse of
  the density of distances between uniform points on the unit sphere of dimension ``D``.
- :func:`multi_similarity`: the pair-mining step of the multi-similarity paper (Wang et al. 2019),
  also ``MultiSimilarityLoss(mining=True)``.
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
      dists: float ``[N, M]`` distances (smaller = harder negative).
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


def distance_weighted(dists, pos_mask, neg_mask, dim, seed, cutoff=0.5, nonzero_loss_cutoff=1.4):
    """Distance-weighted negative sampling (Wu et al. 2017).

    Each anchor draws, with replacement, as many negatives as it has positives (one per
    (anchor, positive) pair) from :func:`distance_weighted_log_weights`; the kept negatives are
    the ones drawn at least once (a set: a negative drawn twice counts once). Positives are
    unchanged. The reference's miner (``distanceWeighted``) fixes ``D = 128`` and the mask shape
    to ``128 x 128`` (so runs only at batch size 128) and feeds the normalized weights to
    ``tf.random.categorical`` as logits; this follows the paper and its authors' code instead.

    Args:
      dists: float ``[N, M]`` L2 distances; pos_mask, neg_mask: bool ``[N, M]``.
      dim: embedding dimension ``D``; seed: int ``[2]`` stateless seed.
    Returns:
      ``(pos_mask, neg_mask)`` bool ``[N, M]``.
    """
    log_w = distance_weighted_log_weights(dists, neg_mask, dim, cutoff, nonzero_loss_cutoff)
    has_neg = tf.reduce_any(neg_mask, axis=1, keepdims=True)
    # A row without negatives must still be a valid distribution for the sampler.
    logits = tf.where(has_neg, log_w, tf.zeros_like(log_w))
    counts = tf.reduce_sum(tf.cast(pos_mask, tf.int32), axis=1)  # draws per anchor
    draws = tf.maximum(tf.reduce_max(counts), 1)
    picks = tf.random.stateless_categorical(logits, draws, seed=seed, dtype=tf.int32)  # [N, S]
    used = tf.range(draws)[None, :] < counts[:, None]  # [N, S]
    hits = tf.one_hot(picks, tf.shape(dists)[1], dtype=tf.int32)  # [N, S, M]
    hits = hits * tf.cast(used, tf.int32)[..., None]
    drawn = tf.reduce_max(hits, axis=1) > 0
    return pos_mask, tf.logical_and(neg_mask, tf.logical_and(drawn, has_neg))


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
    """A miner a pair loss applies to its masks: ``miner(x, ref, pos, neg, seed) -> (pos, neg)``.

    ``x``: normalized queries ``[N, D]``; ``ref``: references ``[M, D]`` or None (the queries
    themselves). ``stochastic`` miners get a stateless int64 ``[2]`` seed from the loss (its
    ``seed`` attribute and a checkpointed call counter).
    """

    name = None
    stochastic = False
    seed = 0

    def __call__(self, embeddings, ref_embeddings, pos_mask, neg_mask, seed=None):
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}({self.get_config()})"


@keras.saving.register_keras_serializable(package="ccp")
class HardNegatives(Miner):
    """:func:`hard_negatives` on the L2 distances of the normalized embeddings.

    (The reference ranks by the loss's own dissimilarity, ``-cos`` for the cosine losses: the
    same order for unit vectors.)
    """

    name = "hard_negatives"

    def __call__(self, embeddings, ref_embeddings, pos_mask, neg_mask, seed=None):
        dists = ops.pairwise_distances(tf.stop_gradient(embeddings),
                                       None if ref_embeddings is None
                                       else tf.stop_gradient(ref_embeddings))
        return hard_negatives(dists, pos_mask, neg_mask)


@keras.saving.register_keras_serializable(package="ccp")
class DistanceWeighted(Miner):
    """:func:`distance_weighted` with ``D`` the embedding size; draws from ``seed``."""

    name = "distance_weighted"
    stochastic = True

    def __init__(self, cutoff=defaults.DISTANCE_WEIGHTED_CUTOFF,
                 nonzero_loss_cutoff=defaults.DISTANCE_WEIGHTED_NONZERO_LOSS_CUTOFF, seed=0):
        self.cutoff, self.nonzero_loss_cutoff = float(cutoff), float(nonzero_loss_cutoff)
        self.seed = int(seed)
        if not 0.0 < self.cutoff < self.nonzero_loss_cutoff <= 2.0:
            raise ValueError("DistanceWeighted: need 0 < cutoff < nonzero_loss_cutoff <= 2, got "
                             f"{cutoff}, {nonzero_loss_cutoff}")

    def __call__(self, embeddings, ref_embeddings, pos_mask, neg_mask, seed=None):
        if seed is None:
            raise ValueError("DistanceWeighted needs a seed (the pair loss passes one)")
        dists = ops.pairwise_distances(tf.stop_gradient(embeddings),
                                       None if ref_embeddings is None
                                       else tf.stop_gradient(ref_embeddings))
        dim = float(embeddings.shape[-1])
        return distance_weighted(dists, pos_mask, neg_mask, dim, seed, self.cutoff,
                                 self.nonzero_loss_cutoff)

    def get_config(self):
        return {"cutoff": self.cutoff, "nonzero_loss_cutoff": self.nonzero_loss_cutoff,
                "seed": self.seed}


@keras.saving.register_keras_serializable(package="ccp")
class MultiSimilarity(Miner):
    """:func:`multi_similarity` on the dot-product similarities of the normalized embeddings."""

    name = "multi_similarity"

    def __init__(self, epsilon=defaults.MS_MINING_EPSILON):
        self.epsilon = float(epsilon)

    def __call__(self, embeddings, ref_embeddings, pos_mask, neg_mask, seed=None):
        sims = ops.pairwise_similarities(embeddings, ref_embeddings)
        return multi_similarity(sims, pos_mask, neg_mask, self.epsilon)

    def get_config(self):
        return {"epsilon": self.epsilon}


REGISTRY = {cls.name: cls for cls in (HardNegatives, DistanceWeighted, MultiSimilarity)}


def get(identifier):
    """None, or a :class:`Miner` from a registered name, a serialized dict or an instance."""
    return registered.resolve(identifier, REGISTRY, Miner, "miner", none_allowed=True)


def serialize(miner):
    """The config form of a miner (what the losses store in ``get_config``)."""
    return keras.saving.serialize_keras_object(miner)
