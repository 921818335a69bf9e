"""A small CNN backbone for the embedded digits demo (32x32 inputs, fast on a CPU)."""
import os

import keras

from ccp import layers

# Narrow enough for ~50 ms training steps on 2 CPU cores (24 images of 32x32).
DEFAULT_WIDTHS = (16, 32, 64)


def small_cnn(input_shape=(32, 32, 3), widths=DEFAULT_WIDTHS, weights=None, name="small_cnn"):
    """Conv(3x3)-BN-ReLU blocks with 2x2 max pooling between stages.

    Every stage but the last has two convolutions; the last has one. About 140k weights with
    the default widths.

    Args:
      input_shape: ``(H, W, C)`` of the normalized input (``x / 255``); H and W divisible by
        ``2 ** (len(widths) - 1)``.
      widths: channels of each stage.
      weights: None (random init) or the path of a ``.weights.h5`` file saved from this
        backbone (``model.save_weights``).
      name: model name.
    Returns:
      keras.Model ``[N, H, W, C] -> [N, H / 2**(len(widths)-1), W / 2**(len(widths)-1),
      widths[-1]]``.
    """
    input_shape = tuple(int(d) for d in input_shape)
    if not widths or any(int(w) < 1 for w in widths):
        raise ValueError(f"widths must be a non-empty list of positive ints, got {widths!r}")
    factor = 2 ** (len(widths) - 1)
    if len(input_shape) != 3 or input_shape[0] % factor or input_shape[1] % factor:
        raise ValueError(f"small_cnn needs an input shape (H, W, C) with H and W divisible by "
                         f"{factor}, got {input_shape}")
    if weights == "imagenet":
        raise ValueError("small_cnn has no ImageNet weights: use weights=None (train from "
                         "scratch) or the path of a .weights.h5 file of this backbone")
    inputs = keras.Input(input_shape, name="unit_images")
    x = inputs
    for stage, width in enumerate(widths):
        convs = 1 if stage == len(widths) - 1 else 2
        for index in range(convs):
            prefix = f"stage{stage + 1}_conv{index + 1}"
            x = keras.layers.Conv2D(int(width), 3, padding="same", use_bias=False, name=prefix)(x)
            x = layers.FusedBatchNormalization(name=f"{prefix}_bn")(x)
            x = keras.layers.ReLU(name=f"{prefix}_relu")(x)
        if stage < len(widths) - 1:
            x = keras.layers.MaxPooling2D(2, name=f"stage{stage + 1}_pool")(x)
    model = keras.Model(inputs, x, name=name)
    if weights is not None:
        path = os.fspath(weights)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"small_cnn weight file {path!r} does not exist: pass a .weights.h5 file saved "
                "from this backbone, or weights=None to train from scratch")
        model.load_weights(path)
    return model
