"""FastAP (Cakir et al., "Deep Metric Learning to Rank", CVPR 2019).

Average precision of each anchor's ranked reference list, with the ranking replaced by a
histogram of squared Euclidean distances of the normalized embeddings (in ``[0, 4]``) over
``L + 1`` bin centers ``c_l = l * 4 / L``; a distance is assigned to the two nearest centers by the
triangular kernel ``relu(1 - |d - c_l| / Delta)``, ``Delta = 4 / L`` (differentiable in ``d``).
With ``h+_l`` / ``h_l`` the positive / all counts in bin ``l`` and ``H+_l`` / ``H_l`` their
cumulative sums: ``FastAP = 1/N+ sum_l h+_l H+_l / H_l``; loss = 1 - FastAP, averaged over the
anchors that have at least one positive.
"""
import keras
import tensorflow as tf

from ccp import defaults, ops
from ccp.losses.base import PairLoss

MAX_SQUARED_DISTANCE = 4.0  # vectors of norm <= 1 (Lipschitz-normalized)


def soft_histograms(sq_dists, pos_mask, neg_mask, num_bins):
    """Triangular-kernel histograms per anchor in ``[N, M]`` memory (no ``[N, M, L+1]`` cube).

    A distance ``d`` in bin interval ``[c_k, c_k+1)`` gives ``1 - f`` to center ``k`` and ``f`` to
    center ``k + 1`` with ``f = d / Delta - k``: exactly the kernel's two non-zero values.

    Args:
      sq_dists: float ``[N, M]`` in ``[0, 4]``; masks bool ``[N, M]``; num_bins: L.
    Returns:
      ``(pos_hist, neg_hist)``, float ``[N, L + 1]``.
    """
    delta = MAX_SQUARED_DISTANCE / num_bins
    scaled = tf.clip_by_value(sq_dists, 0.0, MAX_SQUARED_DISTANCE) / delta
    lower = tf.minimum(tf.floor(tf.stop_gradient(scaled)), num_bins - 1.0)
    upper_weight = scaled - lower
    rows = tf.shape(sq_dists)[0]
    width = num_bins + 1
    row_offset = (tf.range(rows) * width)[:, None]
    lower_index = row_offset + tf.cast(lower, tf.int32)

    def histogram(mask):
        mask = tf.cast(mask, sq_dists.dtype)
        low = tf.math.unsorted_segment_sum(
            tf.reshape((1.0 - upper_weight) * mask, [-1]), tf.reshape(lower_index, [-1]),
            rows * width)
        high = tf.math.unsorted_segment_sum(
            tf.reshape(upper_weight * mask, [-1]), tf.reshape(lower_index + 1, [-1]),
            rows * width)
        return tf.reshape(low + high, [rows, width])

    return histogram(pos_mask), histogram(neg_mask)


def fast_ap(sq_dists, pos_mask, neg_mask, num_bins):
    """1 - FastAP, mean over the anchors (rows) with a positive; 0 when none has one.

    Args:
      sq_dists: float ``[N, M]`` squared distances of normalized vectors; masks bool ``[N, M]``.
    Returns:
      float scalar.
    """
    pos_hist, neg_hist = soft_histograms(sq_dists, pos_mask, neg_mask, num_bins)
    cum_pos = tf.cumsum(pos_hist, axis=1)
    cum_all = tf.cumsum(pos_hist + neg_hist, axis=1)
    has_mass = cum_all > 0.0
    safe_all = tf.where(has_mass, cum_all, tf.ones_like(cum_all))
    precision_terms = tf.where(has_mass, pos_hist * cum_pos / safe_all, 0.0)
    num_pos = tf.reduce_sum(tf.cast(pos_mask, sq_dists.dtype), axis=1)
    valid = num_pos > 0.0
    ap = tf.reduce_sum(precision_terms, axis=1) / tf.maximum(num_pos, 1.0)
    count = tf.reduce_sum(tf.cast(valid, sq_dists.dtype))
    return tf.reduce_sum(tf.where(valid, 1.0 - ap, 0.0)) / tf.maximum(count, 1.0)


@keras.saving.register_keras_serializable(package="ccp")
class FastAPLoss(PairLoss):
    """FastAP on squared L2 distances of the normalized embeddings; takes ``miner=`` (the
    ranked list of an anchor is then its mined references).

    Args:
      num_bins: L, the number of histogram bins (``L + 1`` centers), 10 as in the paper and the
        authors' code.
    """

    supports_miner = True

    def __init__(self, num_bins=defaults.FASTAP_NUM_BINS, **kwargs):
        super().__init__(**kwargs)
        if int(num_bins) != num_bins or num_bins < 1:
            raise ValueError(f"FastAPLoss: num_bins must be a positive integer, got {num_bins}")
        self.num_bins = int(num_bins)

    def compute(self, embeddings, labels, ref_embeddings=None, ref_labels=None):
        sq_dists = ops.pairwise_distances(embeddings, ref_embeddings, squared=True)
        pos, neg = self.pair_masks(sq_dists, embeddings, labels, ref_embeddings, ref_labels)
        return fast_ap(sq_dists, pos, neg, self.num_bins)

    def get_config(self):
        return {**super().get_config(), "num_bins": self.num_bins}
