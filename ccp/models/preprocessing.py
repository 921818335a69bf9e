"""Input normalization: every ccp model takes RGB float images with values in 0..255.

Putting the backbone's input convention inside the model (its first layer) lets the data
pipelines and the exported SavedModel feed raw pixels, whatever the backbone.
"""
import keras
import tensorflow as tf

# Per-channel means, BGR order, of the Caffe-trained BN-Inception (0..255 scale, std 1); a
# BN-Inception weight file may carry its own (ccp.models.bn_inception.read_weight_metadata).
BN_INCEPTION_BGR_MEAN = (104.0, 117.0, 128.0)
# keras.applications' "caffe" mode (ResNet-50): BGR minus the ImageNet means, 0..255 scale.
RESNET_BGR_MEAN = (103.939, 116.779, 123.68)

CONVENTIONS = ("bn_inception", "resnet50", "unit", "raw")


@keras.saving.register_keras_serializable(package="ccp")
class InputNormalization(keras.layers.Layer):
    """RGB ``[N, H, W, 3]`` with values 0..255 -> the backbone's input ``[N, H, W, 3]``.

    Args:
      convention: "bn_inception": RGB -> BGR, minus (104, 117, 128) (BGR order), 0..255 scale;
        "resnet50": RGB -> BGR, minus (103.939, 116.779, 123.68), i.e.
        ``keras.applications.resnet50.preprocess_input``; "unit": ``x / 255`` (RGB); "raw":
        unchanged RGB 0..255 (backbones that normalize inside, e.g. EfficientNet).
      mean: the BGR mean to subtract instead of the convention's (3 floats; "bn_inception" and
        "resnet50" only), e.g. the one a BN-Inception weight file records.
    """

    def __init__(self, convention, mean=None, **kwargs):
        super().__init__(**kwargs)
        if convention not in CONVENTIONS:
            raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
        self.convention = convention
        if mean is not None:
            if convention in ("unit", "raw"):
                raise ValueError(f"InputNormalization: the {convention!r} convention takes no "
                                 "mean")
            mean = tuple(float(m) for m in mean)
            if len(mean) != 3:
                raise ValueError(f"InputNormalization: mean must be 3 values (B, G, R), got "
                                 f"{mean!r}")
        self.mean = mean

    @property
    def bgr_mean(self):
        """The subtracted BGR mean (None for "unit" and "raw")."""
        if self.convention in ("unit", "raw"):
            return None
        if self.mean is not None:
            return self.mean
        return BN_INCEPTION_BGR_MEAN if self.convention == "bn_inception" else RESNET_BGR_MEAN

    def call(self, images):
        images = tf.cast(images, self.compute_dtype)
        if self.convention == "unit":
            return images / 255.0
        if self.convention == "raw":
            return images
        return images[..., ::-1] - tf.constant(self.bgr_mean, dtype=self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "convention": self.convention,
                "mean": None if self.mean is None else list(self.mean)}
