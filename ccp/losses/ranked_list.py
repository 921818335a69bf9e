"""Ranked List loss (Wang et al., "Ranked List Loss for Deep Metric Learning", CVPR 2019).

Per anchor ``i``, with distances ``d`` (Euclidean of the normalized embeddings by default):
- positives outside the boundary ``alpha - m`` (``d > alpha - m``) are pulled in:
  ``L_P = sum w_p (d - (alpha - m)) / sum w_p`` with ``w_p = exp(T_p (d - (alpha - m)))``;
- negatives inside ``alpha`` (``d < alpha``) are pushed out:
  ``L_N = sum w_n (alpha - d) / sum w_n`` with ``w_n = exp(T_n (alpha - d))``;
- ``L = L_P + lambda L_N`` (the paper's ``lambda = 1``: the two sets weigh equally), averaged
  over all anchor rows.
The weights are normalized over the violating pairs only and held constant in back-propagation,
as in the authors' Caffe layer (it computes them in the backward pass and scales each pair's
gradient by them); pytorch-metric-learning back-propagates through them. PML's ``imbalance``
``q`` gives ``(1 - q) L_P + q L_N``: its default 0.5 is half of this loss.

Defaults: the authors' code places the boundaries at ``1 -/+ m/2`` (``alpha = 1 + m/2``, as PML's
default ``alpha``), with ``m = 0.4`` in its In-shop configuration (0.2 in its CUB one),
``T_n = 10``, ``T_p = 0``: ``alpha = 1.2, m = 0.4``.
"""
import keras
import tensorflow as tf

from ccp import defaults
from ccp.losses import distances
from ccp.losses.base import PairLoss


def weighted_violation(violation, mask, temperature):
    """``sum softmax(T v) v`` over the masked entries of each row, ``[N, M] -> [N]`` (0 if none).

    Args:
      violation: float ``[N, M]``, > 0 where ``mask``; mask: bool ``[N, M]``.
    """
    logits = tf.where(mask, temperature * tf.stop_gradient(violation),
                      tf.constant(-1e30, violation.dtype))
    weights = tf.nn.softmax(logits, axis=1) * tf.cast(mask, violation.dtype)
    return tf.reduce_sum(weights * tf.where(mask, violation, 0.0), axis=1)


def ranked_list(dists, pos_mask, neg_mask, boundary, margin, neg_temperature,
                pos_temperature=0.0, neg_weight=1.0):
    """Ranked List loss averaged over anchor rows.

    Args:
      dists: float ``[N, M]``; pos_mask, neg_mask: bool ``[N, M]``.
      boundary: alpha; margin: m; neg_temperature: T_n; pos_temperature: T_p;
      neg_weight: lambda.
    Returns:
      float scalar.
    """
    pos_violation = dists - (boundary - margin)
    neg_violation = boundary - dists
    pos_active = tf.stop_gradient(tf.logical_and(pos_mask, pos_violation > 0.0))
    neg_active = tf.stop_gradient(tf.logical_and(neg_mask, neg_violation > 0.0))
    pos = weighted_violation(pos_violation, pos_active, pos_temperature)
    neg = weighted_violation(neg_violation, neg_active, neg_temperature)
    return tf.reduce_mean(pos + neg_weight * neg)


@keras.saving.register_keras_serializable(package="ccp")
class RankedListLoss(PairLoss):
    """Ranked List loss; takes ``miner=``.

    Args:
      boundary: alpha, the negatives' boundary (1.2).
      margin: m, positives are pulled inside ``alpha - m`` (0.4).
      neg_temperature: T_n of the negative weights (10).
      pos_temperature: T_p of the positive weights (0: uniform).
      neg_weight: lambda, the weight of the negative term (1).
      distance: "euclidean" (default), "snr" or a ``ccp.losses.distances.Distance``.
    """

    supports_miner = True

    def __init__(self, boundary=defaults.RLL_BOUNDARY, margin=defaults.RLL_MARGIN,
                 neg_temperature=defaults.RLL_NEG_TEMPERATURE,
                 pos_temperature=defaults.RLL_POS_TEMPERATURE,
                 neg_weight=defaults.RLL_NEG_WEIGHT, distance=defaults.DISTANCE, **kwargs):
        super().__init__(**kwargs)
        self.boundary, self.margin = float(boundary), float(margin)
        self.neg_temperature, self.pos_temperature = float(neg_temperature), float(pos_temperature)
        self.neg_weight = float(neg_weight)
        self.distance = distances.get(distance)

    def compute(self, embeddings, labels, ref_embeddings=None, ref_labels=None):
        dists = self.distance(embeddings, ref_embeddings)
        pos, neg = self.pair_masks(dists, embeddings, labels, ref_embeddings, ref_labels)
        loss = ranked_list(dists, pos, neg, self.boundary, self.margin, self.neg_temperature,
                           self.pos_temperature, self.neg_weight)
        return loss + self.distance.regularizer(embeddings)

    def get_config(self):
        return {**super().get_config(), "boundary": self.boundary, "margin": self.margin,
                "neg_temperature": self.neg_temperature, "pos_temperature": self.pos_temperature,
                "neg_weight": self.neg_weight, "distance": distances.serialize(self.distance)}
