"""A small CNN backbone for the embedded digits demo (32x32 inputs, fast on a CPU)."""
import keras


def small_cnn(input_shape=(32, 32, 3), widths=(32, 64, 128), name="small_cnn"):
    """Conv-BN-ReLU blocks with 2x2 max pooling between stages.

    Args:
      input_shape: ``(H, W, C)`` of the normalized input.
      widths: channels of each stage (two 3x3 convolutions per stage, one in the last).
    Returns:
      keras.Model ``[N, H, W, C] -> [N, H / 2**(len(widths)-1), W / ..., widths[-1]]``.
    """
    inputs = keras.Input(input_shape)
    x = inputs
    for stage, width in enumerate(widths):
        convs = 1 if stage == len(widths) - 1 else 2
        for index in range(convs):
            prefix = f"stage{stage + 1}_conv{index + 1}"
            x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False, name=prefix)(x)
            x = keras.layers.BatchNormalization(name=f"{prefix}_bn")(x)
            x = keras.layers.ReLU(name=f"{prefix}_relu")(x)
        if stage < len(widths) - 1:
            x = keras.layers.MaxPooling2D(2, name=f"stage{stage + 1}_pool")(x)
    return keras.Model(inputs, x, name=name)
