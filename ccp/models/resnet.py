"""ResNet-50 backbone from keras.applications (SPEC §1), without its classifier."""
import os

import keras

NUM_FEATURES = 2048
NOTOP_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
WEIGHT_SUFFIXES = (".h5", ".hdf5", ".weights.h5")


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
      FileNotFoundError: the weight file does not exist.
      RuntimeError: "imagenet" was asked for but could not be downloaded (no network).
    """
    input_shape = tuple(int(d) for d in input_shape)
    if len(input_shape) != 3 or input_shape[2] != 3 or min(input_shape[:2]) < 32:
        raise ValueError(f"ResNet-50 needs an RGB input shape (H, W, 3) with H, W >= 32, "
                         f"got {input_shape}")
    if weights is not None and weights != "imagenet":
        weights = os.fspath(weights)
        if not os.path.isfile(weights):
            raise FileNotFoundError(
                f"ResNet-50 weight file {weights!r} does not exist. Pass the path of Keras' "
                f"no-top file {NOTOP_FILE} (download it on a machine with network access; "
                "`keras.applications.ResNet50(include_top=False, weights='imagenet')` puts it "
                "in ~/.keras/models), weights='imagenet' where the network is reachable, or "
                "weights=None to train from scratch."
            )
        if not weights.endswith(WEIGHT_SUFFIXES):
            raise ValueError(f"ResNet-50 weight file {weights!r}: expected a .h5 or .weights.h5 "
                             "file")
    try:
        model = keras.applications.ResNet50(
            include_top=False, weights="imagenet" if weights == "imagenet" else None,
            input_shape=input_shape, name=name)
    except Exception as error:  # noqa: BLE001 - download failures vary (URL, SSL, DNS, HTTP)
        if weights != "imagenet":
            raise
        raise RuntimeError(
            "Could not download the ImageNet weights of ResNet-50 (is the network reachable?). "
            f"Download {NOTOP_FILE} on a machine with network access and pass its local path "
            f"as weights=PATH (--weights=PATH), or use weights=None. Cause: {error!r}"
        ) from error
    if weights not in (None, "imagenet"):
        try:
            model.load_weights(weights)
        except (ValueError, KeyError) as error:
            raise ValueError(
                f"ResNet-50 weight file {weights!r} does not fit the no-top ResNet-50 "
                f"(expected Keras' {NOTOP_FILE} or a .weights.h5 saved from this backbone): "
                f"{error}"
            ) from error
    return model
