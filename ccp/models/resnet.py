"""ResNet-50 backbone from keras.applications (SPEC §1)."""
import os

import keras


def resnet50(input_shape=(227, 227, 3), weights=None):
    """ResNet-50 without its classifier: ``[N, H, W, 3] -> [N, H/32, W/32, 2048]``.

    Args:
      input_shape: ``(H, W, 3)`` of the caffe-normalized input.
      weights: None (random), "imagenet" (downloaded by Keras; needs network access), or the
        path of a local ``.h5`` / ``.weights.h5`` file of the no-top ResNet-50.
    """
    if weights not in (None, "imagenet") and not os.path.isfile(str(weights)):
        raise FileNotFoundError(
            f"ResNet-50 weight file {weights!r} does not exist; pass the path of the Keras "
            "no-top file resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5, 'imagenet' "
            "(needs network access) or 'none'"
        )
    try:
        model = keras.applications.ResNet50(
            include_top=False,
            weights="imagenet" if weights == "imagenet" else None,
            input_shape=tuple(input_shape),
        )
    except Exception as error:  # noqa: BLE001 - the download's failure modes vary (URL, SSL, DNS)
        if weights == "imagenet":
            raise RuntimeError(
                "Could not download the ImageNet weights of ResNet-50 (no network?). Download "
                "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5 elsewhere and pass its "
                f"path as weights= / --weights=. Cause: {error}"
            ) from error
        raise
    if weights not in (None, "imagenet"):
        model.load_weights(weights)
    return model
