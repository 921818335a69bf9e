"""Base classes of the loss layers (SPEC §4, §10).

Every loss is a ``keras.layers.Layer`` called as ``layer(labels, embeddings) -> scalar``:
labels int ``[B]`` or ``[B, 1]``, embeddings RAW float ``[B, D]``. The layer applies the
Lipschitz L2 normalization (SPEC §2) to the embeddings and to any proxies itself and computes in
float32 even under a mixed-precision policy.
"""
import keras
import tensorflow as tf

from ccp import ops
from ccp.layers import lipschitz_l2_normalize


def mean_of_positive_terms(terms, mask):
    """Sum of the terms that are > 0 (inside ``mask``) over their count (+1e-16), SPEC §4.

    Args:
      terms: float ``[...]``; mask: bool ``[...]`` (the pairs/triplets that exist).
    Returns:
      float scalar.
    """
    active = tf.stop_gradient(tf.cast(tf.logical_and(mask, terms > 0.0), terms.dtype))
    return tf.reduce_sum(terms * active) / (tf.reduce_sum(active) + 1e-16)


class MetricLoss(keras.layers.Layer):
    """A loss layer: ``call(labels, embeddings, training=None) -> scalar float32``.

    Subclasses implement :meth:`loss_terms`, returning a dict with the total under "loss" and
    named components (logged by the trainer).
    """

    def __init__(self, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)

    def __call__(self, labels, embeddings, *args, **kwargs):
        # Keras only accepts tensors positionally; labels often arrive as lists or numpy.
        return super().__call__(tf.convert_to_tensor(labels), tf.convert_to_tensor(embeddings),
                                *args, **kwargs)

    def loss_terms(self, labels, embeddings, training=None):
        raise NotImplementedError

    def call(self, labels, embeddings, training=None):
        return self.loss_terms(labels, embeddings, training=training)["loss"]

    @property
    def proxy_variables(self):
        """Proxy variables (learning-rate multiplier target; not in the proximal term)."""
        return []

    @staticmethod
    def prepare(labels, embeddings):
        """int32 ``[B]`` labels and Lipschitz-normalized float32 ``[B, D]`` embeddings."""
        embeddings = tf.cast(embeddings, tf.float32)
        return ops.flatten_labels(labels), lipschitz_l2_normalize(embeddings)


class PairLoss(MetricLoss):
    """A pair-based loss with the query/reference signature of DESIGN.md.

    ``compute(embeddings, labels, ref_embeddings=None, ref_labels=None)`` works on
    ALREADY-normalized vectors: without a reference set the batch is compared with itself
    (self-pairs excluded); reference labels < 0 are padding and form no pair.
    """

    def compute(self, embeddings, labels, ref_embeddings=None, ref_labels=None):
        raise NotImplementedError

    def loss_terms(self, labels, embeddings, training=None):
        labels, x = self.prepare(labels, embeddings)
        return {"loss": self.compute(x, labels)}
