"""ResNet-50 backbone from keras.applications (SPEC §1), without its classifier."""
from ccp.models import applications

NUM_FEATURES = 2048
NOTOP_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"


def resnet50(input_shape=(227, 227, 3), weights=None, name="resnet50"):
    """ResNet-50 feature extractor: ``[N, S, S, 3] -> [N, ceil(S/32), ceil(S/32), 2048]``.

    Args:
      input_shape: ``(S, S, 3)`` of the input in keras.applications' "caffe" convention
        (BGR minus the ImageNet means; the model's ``InputNormalization("resnet50")``
        produces it). S >= 32.
      weights: None (random init), "imagenet" (keras.applications downloads
        ``resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5`` into ``~/.keras/models``, or
        uses the copy already there), or the path of a local ``.h5`` / ``.weights.h5`` file of
        the no-top ResNet-50 (Keras' file, or one this function's model saved).
      name: model name.
    Raises:
      ValueError: bad input shape, or a weight file that is not h5 or does not fit.
      FileNotFoundError: the weight file does not exist.
      RuntimeError: "imagenet" was asked for but could not be downloaded (no network).
    """
    return applications.notop_backbone("ResNet50", "ResNet-50", NOTOP_FILE, input_shape,
                                       weights, name)
