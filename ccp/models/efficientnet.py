"""EfficientNet B0..B7 backbones from keras.applications (Tan & Le 2019), without classifier.

keras.applications' EfficientNets rescale and normalize their input themselves (their first
layers), so they take RGB 0..255 as is: the model's ``InputNormalization("raw")``.
"""
import os

import keras

# variant -> (keras.applications constructor name, native input side, output channels F)
VARIANTS = {
    "b0": ("EfficientNetB0", 224, 1280),
    "b1": ("EfficientNetB1", 240, 1280),
    "b2": ("EfficientNetB2", 260, 1408),
    "b3": ("EfficientNetB3", 300, 1536),
    "b4": ("EfficientNetB4", 380, 1792),
    "b5": ("EfficientNetB5", 456, 2048),
    "b6": ("EfficientNetB6", 528, 2304),
    "b7": ("EfficientNetB7", 600, 2560),
}
WEIGHT_SUFFIXES = (".h5", ".hdf5", ".weights.h5")


def efficientnet(variant, input_shape=None, weights=None, name=None):
    """EfficientNet feature extractor: ``[N, S, S, 3] (RGB 0..255) -> [N, s, s, F]``.

    Args:
      variant: "b0" .. "b7".
      input_shape: ``(S, S, 3)``; None for the variant's native side (B0: 224 ... B7: 600).
      weights: None (random init), "imagenet" (keras.applications downloads the no-top file
        into ``~/.keras/models`` or uses the copy there), or the path of a local no-top
        ``.h5`` / ``.weights.h5`` file of this variant (Keras' ``efficientnetbN_notop.h5``).
      name: model name (default "efficientnet_bN").
    Raises:
      ValueError: unknown variant, bad input shape, or a weight file that does not fit.
      FileNotFoundError: the weight file does not exist.
      RuntimeError: "imagenet" was asked for but could not be downloaded (no network).
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown EfficientNet variant {variant!r}; valid: {sorted(VARIANTS)}")
    constructor, native, _ = VARIANTS[variant]
    input_shape = (native, native, 3) if input_shape is None else tuple(
        int(d) for d in input_shape)
    if len(input_shape) != 3 or input_shape[2] != 3 or min(input_shape[:2]) < 32:
        raise ValueError(f"EfficientNet-{variant.upper()} needs an RGB input shape (H, W, 3) "
                         f"with H, W >= 32, got {input_shape}")
    notop = f"{constructor.lower()}_notop.h5"
    if weights is not None and weights != "imagenet":
        weights = os.fspath(weights)
        if not os.path.isfile(weights):
            raise FileNotFoundError(
                f"EfficientNet-{variant.upper()} weight file {weights!r} does not exist. Pass the "
                f"path of Keras' no-top file {notop} (keras.applications.{constructor}("
                "include_top=False, weights='imagenet') puts it in ~/.keras/models on a machine "
                "with network access), or weights=None to train from scratch.")
        if not weights.endswith(WEIGHT_SUFFIXES):
            raise ValueError(f"EfficientNet weight file {weights!r}: expected a .h5 or "
                             ".weights.h5 file")
    try:
        model = getattr(keras.applications, constructor)(
            include_top=False, weights="imagenet" if weights == "imagenet" else None,
            input_shape=input_shape, name=name or f"efficientnet_{variant}")
    except Exception as error:  # noqa: BLE001 - download failures vary (URL, SSL, DNS, HTTP)
        if weights != "imagenet":
            raise
        raise RuntimeError(
            f"Could not download the ImageNet weights of EfficientNet-{variant.upper()} (is the "
            f"network reachable?). Download {notop} elsewhere and pass its path as "
            f"weights=PATH (--weights=PATH), or use weights=None. Cause: {error!r}") from error
    if weights not in (None, "imagenet"):
        try:
            model.load_weights(weights)
        except (ValueError, KeyError) as error:
            raise ValueError(
                f"EfficientNet-{variant.upper()} weight file {weights!r} does not fit the no-top "
                f"{constructor} (expected Keras' {notop} or a .weights.h5 saved from this "
                f"backbone): {error}") from error
    return model
