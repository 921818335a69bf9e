"""Keras layers shared by the models and the losses.

- ``LipschitzL2Normalization``: ``n(x) = x / max(||x||, 1)`` with the custom gradient of the
  paper's §4.4 (SPEC §2).
- ``normalize(x, normalization)``: the normalization a loss applies to embeddings and proxies,
  by name (``NORMALIZATIONS``): "lipschitz" (SPEC §2, the default) or "l2" (plain ``x / ||x||``,
  the reference's ``lipschitz_cont: false``, SPEC §4c).
- ``GlobalPooling``: global average, max, or their sum over the spatial axes (SPEC §1).
- ``FusedBatchNormalization``: ``keras.layers.BatchNormalization`` with the same weights and
  arithmetic, run by TensorFlow's fused kernel (one op forward, one backward) on 4-D inputs.
- ``sublayers`` / ``batchnorm_layers``: layer traversal shared by the models and the trainer.
"""
import keras
import tensorflow as tf

from ccp import keras_compat


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


def l2_normalize(x):
    """Plain L2 normalization of the last axis: ``x / ||x||`` (``tf.nn.l2_normalize``, which
    divides by ``sqrt(max(|x|^2, 1e-12))``), gradient by automatic differentiation.

    The reference's ``lipschitz_cont: false`` (SPEC §4c): every vector lands on the unit sphere,
    also the short ones the Lipschitz normalization leaves unchanged.

    Args:
      x: float ``[..., D]``.
    Returns:
      float ``[..., D]``.
    """
    return tf.math.l2_normalize(tf.convert_to_tensor(x), axis=-1)


# The normalizations a loss can apply to its embeddings and proxies, by name.
NORMALIZATIONS = {"lipschitz": lipschitz_l2_normalize, "l2": l2_normalize}


def check_normalization(normalization, owner):
    """``normalization`` if it names one of ``NORMALIZATIONS``, else a ValueError naming
    ``owner`` (the class or function that received it)."""
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"{owner}: normalization must be one of {sorted(NORMALIZATIONS)}, got "
                         f"{normalization!r}")
    return normalization


def normalize(x, normalization):
    """``x [..., D]`` normalized by the named method of ``NORMALIZATIONS``."""
    return NORMALIZATIONS[check_normalization(normalization, "normalize")](x)


@keras.saving.register_keras_serializable(package="ccp")
class LipschitzL2Normalization(keras.layers.Layer):
    """Layer form of :func:`lipschitz_l2_normalize`: ``[..., D] -> [..., D]``."""

    def call(self, inputs):
        return lipschitz_l2_normalize(inputs)

    def compute_output_shape(self, input_shape):
        return input_shape


POOLING_MODES = ("avg", "max", "avg+max")


@keras.saving.register_keras_serializable(package="ccp")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` computed by TensorFlow's fused batch-norm kernel.

    Keras 3 normalizes with separate ops (moments, then ``tf.nn.batch_normalization``) and
    differentiates through each; the fused kernel (``FusedBatchNormV3`` and its gradient op)
    does the same arithmetic in one pass each way: about 18 % of a small CNN's CPU step with
    oneDNN on (BENCHMARKS.md), and it is the kernel cuDNN and XLA specialise.

    Same layer, same semantics: the same weights (``gamma``, ``beta``, ``moving_mean``,
    ``moving_variance``, so checkpoints and ``isinstance(layer, keras.layers.BatchNormalization)``
    carry over), the same batch statistics (biased variance for the normalization *and* for the
    moving average, as Keras 3 does: the kernel's Bessel-corrected variance is scaled back by
    ``(n - 1) / n``), the same update ``moving = moving * momentum + batch * (1 - momentum)``,
    inference mode when ``training`` is false or the layer is frozen (``trainable=False``), and
    float32 arithmetic for float16/bfloat16 inputs. Inputs the fused kernel does not cover (not
    4-D, the channel axis neither last nor second, a mask, ``renorm``, ``synchronized``) go
    through Keras' own implementation.

    Input ``[B, H, W, C]`` (or ``[B, C, H, W]`` with ``axis=1``) -> output of the same shape.
    """

    def _fused_data_format(self, inputs):
        """"NHWC" / "NCHW" where the fused kernel computes this layer, else None."""
        if len(inputs.shape) != 4 or self.renorm or self.synchronized:
            return None
        return {3: "NHWC", 1: "NCHW"}.get(self.axis % 4)

    def call(self, inputs, training=None, mask=None):
        data_format = self._fused_data_format(inputs)
        if mask is not None or data_format is None:
            return super().call(inputs, training=training, mask=mask)
        x = tf.cast(inputs, "float32")
        channels = x.shape[3 if data_format == "NHWC" else 1]
        gamma = (tf.cast(self.gamma, "float32") if self.scale
                 else tf.ones([channels], "float32"))
        beta = (tf.cast(self.beta, "float32") if self.center
                else tf.zeros([channels], "float32"))
        if training and self.trainable:
            outputs, mean, corrected_variance = tf.compat.v1.nn.fused_batch_norm(
                x, gamma, beta, epsilon=self.epsilon, data_format=data_format,
                is_training=True)
            count = tf.cast(tf.size(x) // channels, "float32")
            variance = corrected_variance * ((count - 1.0) / tf.maximum(count, 1.0))
            momentum = self.momentum
            self.moving_mean.assign(
                tf.cast(self.moving_mean, "float32") * momentum + mean * (1.0 - momentum))
            self.moving_variance.assign(
                tf.cast(self.moving_variance, "float32") * momentum
                + variance * (1.0 - momentum))
        else:
            outputs, _, _ = tf.compat.v1.nn.fused_batch_norm(
                x, gamma, beta, mean=tf.cast(self.moving_mean, "float32"),
                variance=tf.cast(self.moving_variance, "float32"), epsilon=self.epsilon,
                data_format=data_format, is_training=False)
        return tf.cast(outputs, self.compute_dtype)


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
    if isinstance(layer, keras.layers.Layer):
        return keras_compat.nested_layers(layer)
    found = []
    for child in getattr(layer, "layers", []):
        found.append(child)
        found.extend(sublayers(child))
    return found


def batchnorm_layers(model):
    """Every ``keras.layers.BatchNormalization`` inside ``model``, nested models included."""
    return [layer for layer in sublayers(model)
            if isinstance(layer, keras.layers.BatchNormalization)]
