"""EfficientNet B0..B7 backbones from keras.applications (Tan & Le 2019), without classifier.

keras.applications' EfficientNets rescale and normalize their input themselves (their first
layers), so they take RGB 0..255 as is: the model's ``InputNormalization("raw")``.
"""
from ccp.models import applications

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
    return applications.notop_backbone(
        constructor, f"EfficientNet-{variant.upper()}", f"{constructor.lower()}_notop.h5",
        (native, native, 3) if input_shape is None else input_shape, weights,
        name or f"efficientnet_{variant}")
