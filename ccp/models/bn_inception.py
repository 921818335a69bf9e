"""BN-Inception (Inception-v2 with batch normalization), the backbone of the paper (SPEC §1).

Layer names and weight shapes follow the widely distributed Caffe-converted ImageNet checkpoint
(``bn_inception-52deb4733.pth``): every convolution ``NAME`` (with bias) is followed by
``NAME_bn`` (BatchNormalization, epsilon 1e-5) and a ReLU. Caffe's arithmetic is reproduced
exactly: explicit symmetric zero padding before convolutions, ceil-mode max pooling (extra
bottom/right padding; zeros act as -inf after a ReLU) and average pooling that counts the padded
zeros (``count_include_pad``).

Weights load from a local file: ``.npz`` with keys ``"LAYER/kernel"``, ``"LAYER/bias"``,
``"LAYER_bn/gamma"``, ``"LAYER_bn/beta"``, ``"LAYER_bn/moving_mean"``,
``"LAYER_bn/moving_variance"`` (kernels HWIO), or a Keras ``.h5``/``.weights.h5`` of this model.
``scripts/convert_bn_inception_pth.py`` converts the PyTorch checkpoint to that ``.npz``.
"""
import math
import os

import keras
import numpy as np

BN_EPSILON = 1e-5
DEFAULT_WEIGHTS_FILE = "bn_inception_imagenet.npz"

# Inception blocks: (name, 1x1, (3x3 reduce, 3x3), (double reduce, double 1, double 2),
#                    pool type, pool projection, stride). Stride-2 blocks have no 1x1 branch
# and no pool projection (their pool branch is a stride-2 max pool).
INCEPTION_BLOCKS = (
    ("inception_3a", 64, (64, 64), (64, 96, 96), "avg", 32, 1),
    ("inception_3b", 64, (64, 96), (64, 96, 96), "avg", 64, 1),
    ("inception_3c", 0, (128, 160), (64, 96, 96), "max", 0, 2),
    ("inception_4a", 224, (64, 96), (96, 128, 128), "avg", 128, 1),
    ("inception_4b", 192, (96, 128), (96, 128, 128), "avg", 128, 1),
    ("inception_4c", 160, (128, 160), (128, 160, 160), "avg", 128, 1),
    ("inception_4d", 96, (128, 192), (160, 192, 192), "avg", 128, 1),
    ("inception_4e", 0, (128, 192), (192, 256, 256), "max", 0, 2),
    ("inception_5a", 352, (192, 320), (160, 224, 224), "avg", 128, 1),
    ("inception_5b", 352, (192, 320), (192, 224, 224), "max", 128, 1),
)


def _conv_bn_relu(x, filters, kernel, name, stride=1, pad=0):
    if pad:
        x = keras.layers.ZeroPadding2D(pad, name=f"{name}_pad")(x)
    x = keras.layers.Conv2D(filters, kernel, strides=stride, padding="valid", name=name)(x)
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, momentum=0.9, name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def _ceil_max_pool(x, name, pool=3, stride=2):
    """Caffe ceil-mode max pooling without padding (inputs are >= 0: zero padding is -inf)."""
    size = x.shape[1]
    out = math.ceil((size - pool) / stride) + 1
    extra = max((out - 1) * stride + pool - size, 0)
    if extra:
        x = keras.layers.ZeroPadding2D(((0, extra), (0, extra)), name=f"{name}_pad")(x)
    return keras.layers.MaxPooling2D(pool, stride, padding="valid", name=name)(x)


def _inception_block(x, spec):
    name, n1x1, (r3, n3), (rd, d1, d2), pool_type, proj, stride = spec
    branches = []
    if n1x1:
        branches.append(_conv_bn_relu(x, n1x1, 1, f"{name}_1x1"))
    b = _conv_bn_relu(x, r3, 1, f"{name}_3x3_reduce")
    branches.append(_conv_bn_relu(b, n3, 3, f"{name}_3x3", stride=stride, pad=1))
    b = _conv_bn_relu(x, rd, 1, f"{name}_double_3x3_reduce")
    b = _conv_bn_relu(b, d1, 3, f"{name}_double_3x3_1", pad=1)
    branches.append(_conv_bn_relu(b, d2, 3, f"{name}_double_3x3_2", stride=stride, pad=1))
    if stride == 2:
        branches.append(_ceil_max_pool(x, f"{name}_pool"))
    else:
        p = keras.layers.ZeroPadding2D(1, name=f"{name}_pool_pad")(x)
        if pool_type == "avg":
            p = keras.layers.AveragePooling2D(3, 1, padding="valid", name=f"{name}_pool")(p)
        else:
            p = keras.layers.MaxPooling2D(3, 1, padding="valid", name=f"{name}_pool")(p)
        branches.append(_conv_bn_relu(p, proj, 1, f"{name}_pool_proj"))
    return keras.layers.Concatenate(name=f"{name}_output")(branches)


def bn_inception(input_shape=(227, 227, 3), name="bn_inception"):
    """BN-Inception feature extractor: ``[N, H, W, 3] -> [N, h, w, 1024]``.

    Args:
      input_shape: ``(H, W, 3)`` of the BGR mean-subtracted input (see InputNormalization).
    """
    inputs = keras.Input(input_shape)
    x = _conv_bn_relu(inputs, 64, 7, "conv1_7x7_s2", stride=2, pad=3)
    x = _ceil_max_pool(x, "pool1_3x3_s2")
    x = _conv_bn_relu(x, 64, 1, "conv2_3x3_reduce")
    x = _conv_bn_relu(x, 192, 3, "conv2_3x3", pad=1)
    x = _ceil_max_pool(x, "pool2_3x3_s2")
    for spec in INCEPTION_BLOCKS:
        x = _inception_block(x, spec)
    return keras.Model(inputs, x, name=name)


def _weight_names(layer):
    if isinstance(layer, keras.layers.Conv2D):
        return ("kernel", "bias")
    if isinstance(layer, keras.layers.BatchNormalization):
        return ("gamma", "beta", "moving_mean", "moving_variance")
    return ()


def weight_arrays(model):
    """``{"LAYER/weight": array}`` of every conv and BN layer (the .npz checkpoint format)."""
    arrays = {}
    for layer in model.layers:
        for key, value in zip(_weight_names(layer), layer.get_weights()):
            arrays[f"{layer.name}/{key}"] = value
    return arrays


def default_weights_path():
    folder = os.environ.get("CCP_WEIGHTS_DIR", os.path.join(os.path.expanduser("~"), ".keras", "models"))
    return os.path.join(folder, DEFAULT_WEIGHTS_FILE)


def resolve_weights_path(weights):
    """'imagenet' -> the converted checkpoint's default location; a path is checked."""
    path = default_weights_path() if weights == "imagenet" else str(weights)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"BN-Inception weight file {path!r} not found. Convert the PyTorch checkpoint "
            "bn_inception-52deb4733.pth with `python scripts/convert_bn_inception_pth.py "
            f"CHECKPOINT.pth {default_weights_path()}` (or set $CCP_WEIGHTS_DIR), pass another "
            "file with --weights=PATH, or train from scratch with --weights=none."
        )
    return path


def load_weights(model, path):
    """Loads an .npz (``LAYER/weight`` keys) or Keras .h5 checkpoint into ``model``.

    Raises ValueError listing missing, unexpected or mis-shaped entries.
    """
    if not path.endswith(".npz"):
        model.load_weights(path)
        return model
    with np.load(path) as stored:
        stored = dict(stored)
    expected = weight_arrays(model)
    missing = sorted(set(expected) - set(stored))
    unexpected = sorted(set(stored) - set(expected))
    mismatched = sorted(
        f"{k}: file {stored[k].shape} vs model {expected[k].shape}"
        for k in set(expected) & set(stored) if stored[k].shape != expected[k].shape
    )
    if missing or unexpected or mismatched:
        def show(items):
            return ", ".join(items[:8]) + (f" ... ({len(items)} in all)" if len(items) > 8 else "")
        raise ValueError(
            f"BN-Inception weight file {path} does not match the model: "
            f"missing [{show(missing)}], unexpected [{show(unexpected)}], "
            f"mismatched [{show(mismatched)}]"
        )
    for layer in model.layers:
        names = _weight_names(layer)
        if names:
            layer.set_weights([stored[f"{layer.name}/{key}"] for key in names])
    return model


_TORCH_BN_KEYS = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean",
                  "running_var": "moving_variance"}


def from_torch_state_dict(state_dict):
    """Maps the PyTorch checkpoint's arrays to this module's ``.npz`` layout.

    Args:
      state_dict: ``{"conv1_7x7_s2.weight": array OIHW, "conv1_7x7_s2_bn.running_mean": ...}``
        as numpy arrays (the classifier ``last_linear.*`` and ``num_batches_tracked`` entries
        are dropped).
    Returns:
      ``{"conv1_7x7_s2/kernel": array HWIO, "conv1_7x7_s2_bn/moving_mean": ..., ...}``.
    """
    arrays = {}
    for key, value in state_dict.items():
        layer, _, field = key.rpartition(".")
        if layer.startswith("last_linear") or field == "num_batches_tracked":
            continue
        value = np.asarray(value, np.float32)
        if layer.endswith("_bn"):
            if field not in _TORCH_BN_KEYS:
                raise ValueError(f"unexpected BatchNorm entry {key!r} in the checkpoint")
            arrays[f"{layer}/{_TORCH_BN_KEYS[field]}"] = value
        elif field == "weight":
            arrays[f"{layer}/kernel"] = np.transpose(value, (2, 3, 1, 0))  # OIHW -> HWIO
        elif field == "bias":
            arrays[f"{layer}/bias"] = value
        else:
            raise ValueError(f"unexpected entry {key!r} in the checkpoint")
    return arrays
