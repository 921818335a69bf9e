"""Input normalization layers: models take RGB float images with values in [0, 255]."""
import keras
import tensorflow as tf

# Per-channel means in BGR order of the Caffe-trained BN-Inception (SPEC §6).
BN_INCEPTION_BGR_MEAN = (104.0, 117.0, 128.0)
# keras.applications' "caffe" convention (ResNet-50): BGR minus the ImageNet means.
RESNET_BGR_MEAN = (103.939, 116.779, 123.68)

CONVENTIONS = ("bn_inception", "resnet50", "unit")


@keras.saving.register_keras_serializable(package="ccp")
class InputNormalization(keras.layers.Layer):
    """RGB ``[N, H, W, 3]`` in 0..255 -> the backbone's expected input.

    Args:
      convention: "bn_inception" (BGR, 0-255, minus (104, 117, 128)), "resnet50" (BGR minus
        the ImageNet means, Keras' "caffe" mode) or "unit" (RGB / 255).
    """

    def __init__(self, convention, **kwargs):
        super().__init__(**kwargs)
        if convention not in CONVENTIONS:
            raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
        self.convention = convention

    def call(self, images):
        images = tf.cast(images, self.compute_dtype)
        if self.convention == "unit":
            return images / 255.0
        mean = BN_INCEPTION_BGR_MEAN if self.convention == "bn_inception" else RESNET_BGR_MEAN
        bgr = images[..., ::-1]
        return bgr - tf.constant(mean, dtype=self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "convention": self.convention}
