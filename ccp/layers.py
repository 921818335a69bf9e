"""Keras layers shared by the models and the losses.

- ``LipschitzL2Normalization``: ``n(x) = x / max(||x||, 1)`` with the custom gradient of the
  paper's §4.4 (SPEC §2).
- ``GlobalPooling``: global average, max, or their sum over the spatial axes (SPEC §1).
- ``sublayers`` / ``batchnorm_layers``: layer traversal shared by the models and the trainer.
"""
import keras
import tensorflow as tf


@tf.custom_gradient
def _lipschitz_l2_normalize_rows(x):
    squared_norm = tf.reduce_sum(tf.square(x), axis=-1, keepdims=True)
    # sqrt(max(|x|^2, 1)) == max(|x|, 1) exactly (sqrt is monotone and correctly rounded).
    scale = tf.sqrt(tf.maximum(squared_norm, 1.0))
    u = x / scale

    def grad(dy):
        # Projection onto the sphere for long vectors, identity inside the ball (SPEC §2):
        # dx = (dy - <u, dy> u) / ||x||  if ||x|| > 1, else dy. Inside, the scale is exactly 1
        # and the projection coefficient is zeroed, so one formula serves both cases.
        along = tf.reduce_sum(u * dy, axis=-1, keepdims=True)
        along = tf.where(squared_norm > 1.0, along, tf.zeros_like(along))
        return (dy - along * u) / scale

    return u, grad


def lipschitz_l2_normalize(x):
    """Lipschitz L2 normalization of the last axis: ``x / max(||x||, 1)``.

    Args:
      x: float ``[..., D]``.
    Returns:
      float ``[..., D]``: rows longer than 1 projected onto the unit sphere, others unchanged.
    """
    return _lipschitz_l2_normalize_rows(tf.convert_to_tensor(x))


@keras.saving.register_keras_serializable(package="ccp")
class LipschitzL2Normalization(keras.layers.Layer):
    """Layer form of :func:`lipschitz_l2_normalize`: ``[..., D] -> [..., D]``."""

    def call(self, inputs):
        return lipschitz_l2_normalize(inputs)

    def compute_output_shape(self, input_shape):
        return input_shape


POOLING_MODES = ("avg", "max", "avg+max")


@keras.saving.register_keras_serializable(package="ccp")
class GlobalPooling(keras.layers.Layer):
    """Global pooling over height and width: ``[N, H, W, C] -> [N, C]``.

    Args:
      mode: "avg", "max", or "avg+max" (the sum of both, as the reference code's option).
    """

    def __init__(self, mode="avg", **kwargs):
        super().__init__(**kwargs)
        if mode not in POOLING_MODES:
            raise ValueError(f"GlobalPooling mode must be one of {POOLING_MODES}, got {mode!r}")
        self.mode = mode

    def call(self, inputs):
        pooled = []
        if self.mode in ("avg", "avg+max"):
            pooled.append(tf.reduce_mean(inputs, axis=[1, 2]))
        if self.mode in ("max", "avg+max"):
            pooled.append(tf.reduce_max(inputs, axis=[1, 2]))
        return tf.add_n(pooled)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


def sublayers(layer):
    """Every layer nested inside ``layer`` (models, layers holding layers), depth first."""
    if hasattr(layer, "_flatten_layers"):
        return list(layer._flatten_layers(include_self=False, recursive=True))
    found = []
    for child in getattr(layer, "layers", []):
        found.append(child)
        found.extend(sublayers(child))
    return found


def batchnorm_layers(model):
    """Every ``keras.layers.BatchNormalization`` inside ``model``, nested models included."""
    return [layer for layer in sublayers(model)
            if isinstance(layer, keras.layers.BatchNormalization)]
