"""Softmax losses over a proxy bank of the reference framework (SPEC §4b).

- :class:`NormalizedSoftmaxLoss`: the reference's ``XEntLoss`` as SPEC §4b fixes it: softmax
  cross-entropy of cosine similarities to one normalized proxy per class, with a temperature.
- :class:`VirtualSoftmaxLoss`: ProxyNCA with one virtual negative class per sample (Chen et al.,
  "Virtual Class Enhanced Discriminative Embedding Learning", NeurIPS 2018), in the reference's
  form.

Both own a class-major proxy bank (``.proxies`` ``[C*K, D]``, ``.proxy_labels`` ``[C*K]``) and
expose ``proxy_loss(x, labels, proxies, proxy_labels)`` on normalized inputs, which
``ProxySynthesisLoss`` composes with.
"""
import keras
import tensorflow as tf

from ccp import defaults, ops
from ccp.losses.proxy import ProxyLoss


def masked_logsumexp(z, mask):
    """``log sum_{mask} exp(z)`` per row, ``[N, M] -> [N]`` (-1e30 for an empty row)."""
    return tf.reduce_logsumexp(tf.where(mask, z, tf.constant(-1e30, z.dtype)), axis=1)


def normalized_softmax(sims, pos_mask, temperature):
    """``mean_b -log(sum_{own} e^{s/T} / sum_p e^{s/T})`` (SPEC §4b), computed stably.

    Args:
      sims: float ``[B, P]`` sample-vs-proxy similarities; pos_mask: bool ``[B, P]``.
    """
    logits = sims / temperature
    own = masked_logsumexp(logits, pos_mask)
    return tf.reduce_mean(tf.reduce_logsumexp(logits, axis=1) - own)


def virtual_softmax(sims, self_sims, pos_mask, temperature, margin):
    """VirtualSoftmax, reference form (SPEC §4b).

    ``logits_b = [(s_bp - margin [p positive]) / T for every proxy p, |x_b|^2 / T]``; loss =
    mean over samples of ``-log(1e-16 + softmax mass on the own-class proxies)``; the virtual
    column is never a positive.

    Args:
      sims: float ``[B, P]``; self_sims: float ``[B]`` (``x_b . x_b``); pos_mask: bool ``[B, P]``.
    """
    pos = tf.cast(pos_mask, sims.dtype)
    logits = tf.concat([sims - margin * pos, self_sims[:, None]], axis=1) / temperature
    probabilities = tf.nn.softmax(logits, axis=1)
    own = tf.reduce_sum(probabilities[:, :-1] * pos, axis=1)
    return tf.reduce_mean(-tf.math.log(1e-16 + own))


@keras.saving.register_keras_serializable(package="ccp")
class NormalizedSoftmaxLoss(ProxyLoss):
    """Normalized softmax: cross-entropy over ``x . w_c / T`` with one normalized proxy per class.

    The reference's ``XEntLoss`` as shipped differs (SPEC §4b takes this form): it scores
    ``-L2 distance / T``, its references are the batch's first ``classes_per_batch`` samples
    unless a proxy bank exists, and it averages over references (anchors) rather than samples.

    Args:
      num_classes, embedding_size: the bank is ``[num_classes, D]``.
      temperature: T (0.11, the reference's ``lambda_softmax``).
    """

    def __init__(self, num_classes, embedding_size,
                 temperature=defaults.NORMALIZED_SOFTMAX_TEMPERATURE, **kwargs):
        super().__init__(num_classes, embedding_size, proxies_per_class=1, **kwargs)
        self.temperature = float(temperature)
        if self.temperature <= 0:
            raise ValueError(f"NormalizedSoftmaxLoss: temperature must be > 0, got {temperature}")
        self.build()

    def proxy_loss(self, x, labels, proxies, proxy_labels):
        """On normalized ``x [B, D]``, ``proxies [P, D]``; labels ``[B]``, ``[P]``."""
        pos, _ = ops.pair_masks(labels, proxy_labels)
        return normalized_softmax(ops.pairwise_similarities(x, proxies), pos, self.temperature)

    def loss_terms(self, labels, embeddings, training=None):
        labels, x = self.prepare(labels, embeddings)
        return {"loss": self.proxy_loss(x, labels, self.normalized_proxies(), self.proxy_labels)}

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature}


@keras.saving.register_keras_serializable(package="ccp")
class VirtualSoftmaxLoss(ProxyLoss):
    """VirtualSoftmax around ProxyNCA, the reference's form (SPEC §4b).

    The virtual logit is ``x . x / T`` of the (Lipschitz-)normalized sample, not the paper's
    ``||W_y|| ||x|| / T``; ``margin`` is ProxyNCA's ``delta`` subtracted from the positive
    similarities. The reference builds it only around its ProxyNCA (around ProxyAnchor it
    crashes); this is that form.

    Args:
      num_classes, embedding_size, proxies_per_class: the bank ``[num_classes * K, D]``.
      temperature: T (0.11); margin: delta (0).
    """

    def __init__(self, num_classes, embedding_size,
                 temperature=defaults.VIRTUAL_SOFTMAX_TEMPERATURE,
                 margin=defaults.VIRTUAL_SOFTMAX_MARGIN, proxies_per_class=1, **kwargs):
        super().__init__(num_classes, embedding_size, proxies_per_class=proxies_per_class, **kwargs)
        self.temperature, self.margin = float(temperature), float(margin)
        if self.temperature <= 0:
            raise ValueError(f"VirtualSoftmaxLoss: temperature must be > 0, got {temperature}")
        self.build()

    def proxy_loss(self, x, labels, proxies, proxy_labels):
        """On normalized ``x [B, D]``, ``proxies [P, D]``; labels ``[B]``, ``[P]``."""
        pos, _ = ops.pair_masks(labels, proxy_labels)
        sims = ops.pairwise_similarities(x, proxies)
        self_sims = tf.reduce_sum(tf.square(x), axis=1)
        return virtual_softmax(sims, self_sims, pos, self.temperature, self.margin)

    def loss_terms(self, labels, embeddings, training=None):
        labels, x = self.prepare(labels, embeddings)
        return {"loss": self.proxy_loss(x, labels, self.normalized_proxies(), self.proxy_labels)}

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature, "margin": self.margin,
                "proxies_per_class": self.proxies_per_class}
