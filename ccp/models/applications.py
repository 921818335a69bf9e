"""A keras.applications backbone without its classifier, with the checks every such backbone
needs: an RGB input shape, a local weight file that exists and fits, a clear error when the
ImageNet download fails (used by :mod:`ccp.models.resnet` and :mod:`ccp.models.efficientnet`)."""
import os

import keras

WEIGHT_SUFFIXES = (".h5", ".hdf5", ".weights.h5")


def _checked_weight_path(weights, label, notop_file, constructor):
    """``weights`` as a path string when it names a file, else ``weights`` itself (None or
    "imagenet"); raises when the file is missing or not an h5 file."""
    if weights is None or weights == "imagenet":
        return weights
    weights = os.fspath(weights)
    if not os.path.isfile(weights):
        raise FileNotFoundError(
            f"{label} weight file {weights!r} does not exist. Pass the path of Keras' no-top "
            f"file {notop_file} (download it on a machine with network access; "
            f"`keras.applications.{constructor}(include_top=False, weights='imagenet')` puts it "
            "in ~/.keras/models), weights='imagenet' where the network is reachable, or "
            "weights=None to train from scratch.")
    if not weights.endswith(WEIGHT_SUFFIXES):
        raise ValueError(f"{label} weight file {weights!r}: expected a .h5 or .weights.h5 file")
    return weights


def notop_backbone(constructor, label, notop_file, input_shape, weights, name):
    """``keras.applications.<constructor>(include_top=False)``: ``[N, H, W, 3] -> [N, h, w, F]``.

    Args:
      constructor: the keras.applications class name, e.g. "ResNet50".
      label: the backbone's name in messages, e.g. "ResNet-50".
      notop_file: Keras' no-top weight file name (named in the messages).
      input_shape: ``(H, W, 3)`` with H, W >= 32.
      weights: None (random init), "imagenet" (Keras downloads the no-top file, or uses the
        copy in ``~/.keras/models``), or the path of a local ``.h5`` / ``.weights.h5`` no-top
        file (Keras' or one saved from this backbone).
      name: model name.
    Raises:
      ValueError: bad input shape, or a weight file that is not h5 or does not fit.
      FileNotFoundError: the weight file does not exist.
      RuntimeError: "imagenet" was asked for but could not be downloaded (no network).
    """
    input_shape = tuple(int(d) for d in input_shape)
    if len(input_shape) != 3 or input_shape[2] != 3 or min(input_shape[:2]) < 32:
        raise ValueError(f"{label} needs an RGB input shape (H, W, 3) with H, W >= 32, "
                         f"got {input_shape}")
    weights = _checked_weight_path(weights, label, notop_file, constructor)
    try:
        model = getattr(keras.applications, constructor)(
            include_top=False, weights="imagenet" if weights == "imagenet" else None,
            input_shape=input_shape, name=name)
    except Exception as error:  # noqa: BLE001 - download failures vary (URL, SSL, DNS, HTTP)
        if weights != "imagenet":
            raise
        raise RuntimeError(
            f"Could not download the ImageNet weights of {label} (is the network reachable?). "
            f"Download {notop_file} on a machine with network access and pass its local path "
            f"as weights=PATH (--weights=PATH), or use weights=None. Cause: {error!r}"
        ) from error
    if weights not in (None, "imagenet"):
        try:
            model.load_weights(weights)
        except (ValueError, KeyError) as error:
            raise ValueError(
                f"{label} weight file {weights!r} does not fit the no-top {constructor} "
                f"(expected Keras' {notop_file} or a .weights.h5 saved from this backbone): "
                f"{error}") from error
    return model
