"""Circle loss (Sun et al., "Circle Loss: A Unified Perspective of Pair Similarity Optimization",
CVPR 2020), pair-wise labels, cosine similarities.

Per anchor ``i`` with positive similarities ``s_p`` and negative similarities ``s_n``:
``log(1 + sum_n exp(gamma a_n (s_n - m)) * sum_p exp(-gamma a_p (s_p - 1 + m)))``, with the
self-paced weights ``a_p = relu(1 + m - s_p)``, ``a_n = relu(s_n + m)`` (``O_p = 1 + m``,
``O_n = -m``, ``Delta_p = 1 - m``, ``Delta_n = m``) held constant in back-propagation, as the
authors' code and pytorch-metric-learning do.
"""
import keras
import tensorflow as tf

from ccp import defaults, ops
from ccp.losses.base import PairLoss


def masked_logsumexp(z, mask):
    """``log sum_{mask} exp(z)`` per row, ``[N, M] -> [N]``; a row without entries gives -1e30."""
    return tf.reduce_logsumexp(tf.where(mask, z, tf.constant(-1e30, z.dtype)), axis=1)


def circle(sims, pos_mask, neg_mask, margin, gamma):
    """Circle loss in its log-sum-exp form, averaged over the anchors (rows) that have at least
    one positive and one negative (others have no term; 0 when no anchor qualifies).

    ``log(1 + A * B) = softplus(log A + log B)``: stable at any ``gamma``.

    Args:
      sims: float ``[N, M]`` cosine similarities; pos_mask, neg_mask: bool ``[N, M]``.
    Returns:
      float scalar.
    """
    alpha_p = tf.stop_gradient(tf.nn.relu(1.0 + margin - sims))
    alpha_n = tf.stop_gradient(tf.nn.relu(sims + margin))
    pos_logits = -gamma * alpha_p * (sims - (1.0 - margin))
    neg_logits = gamma * alpha_n * (sims - margin)
    per_anchor = tf.nn.softplus(masked_logsumexp(pos_logits, pos_mask)
                                + masked_logsumexp(neg_logits, neg_mask))
    valid = tf.logical_and(tf.reduce_any(pos_mask, axis=1), tf.reduce_any(neg_mask, axis=1))
    count = tf.reduce_sum(tf.cast(valid, sims.dtype))
    return tf.reduce_sum(tf.where(valid, per_anchor, 0.0)) / tf.maximum(count, 1.0)


@keras.saving.register_keras_serializable(package="ccp")
class CircleLoss(PairLoss):
    """Circle loss on cosine similarities of the normalized embeddings; takes ``miner=``.

    Args:
      margin: the relaxation ``m`` (0.4).
      gamma: the scale (80).
    Defaults: the paper's fine-grained image retrieval setting (CUB, Cars196, SOP), also PML's;
    the paper uses m = 0.25, gamma = 256 for face recognition and gamma = 128 for person re-id.
    """

    supports_miner = True

    def __init__(self, margin=defaults.CIRCLE_MARGIN, gamma=defaults.CIRCLE_GAMMA, **kwargs):
        super().__init__(**kwargs)
        self.margin, self.gamma = float(margin), float(gamma)
        if self.gamma <= 0:
            raise ValueError(f"CircleLoss: gamma must be > 0, got {gamma}")

    def compute(self, embeddings, labels, ref_embeddings=None, ref_labels=None):
        sims = ops.pairwise_similarities(embeddings, ref_embeddings)
        pos, neg = self.pair_masks(-sims, embeddings, labels, ref_embeddings, ref_labels)
        return circle(sims, pos, neg, self.margin, self.gamma)

    def get_config(self):
        return {**super().get_config(), "margin": self.margin, "gamma": self.gamma}
