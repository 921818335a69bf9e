"""BN-Inception (Inception-v2 with batch normalization), the backbone of the paper (SPEC §1).

Layer names and weight shapes follow the widely distributed Caffe-converted ImageNet checkpoint
(PyTorch ``bn_inception-52deb4733.pth``): every convolution ``NAME`` (with bias) is followed by
``NAME_bn`` (BatchNormalization, epsilon 1e-5) and a ReLU. The checkpoint's arithmetic is
reproduced exactly:

- convolutions pad explicitly and symmetrically (``ZeroPadding2D`` + "valid"), as Caffe/PyTorch
  do, instead of TF's asymmetric "same" padding for stride 2;
- max pooling is ceil-mode: the last window may hang over the bottom/right border. That is
  implemented as extra bottom/right zero padding, exact because every pooled tensor here is a
  ReLU output (>= 0), so a padded zero never wins over a real value;
- the 3x3/stride-1 average pooling of the inception blocks counts the padded zeros
  (``count_include_pad=True``), hence explicit zero padding + "valid" average pooling.

The stride-2 blocks (inception_3c, inception_4e) concatenate a stride-2 convolution branch with
a ceil-mode pooling branch; the two agree in size only for an even input, so not every image
size works (227 and 224 do; see :func:`feature_map_sizes`).

Weights load from a local file with :func:`load_weights`, matched by layer name:
- ``.npz`` with keys ``"LAYER/WEIGHT"``: ``conv1_7x7_s2/kernel`` (HWIO), ``conv1_7x7_s2/bias``,
  ``conv1_7x7_s2_bn/gamma``, ``.../beta``, ``.../moving_mean``, ``.../moving_variance``
  (``scripts/convert_bn_inception_pth.py`` writes it from the PyTorch checkpoint);
- ``.h5`` written with h5py in the same layout (a group per layer, a dataset per weight);
- a Keras-written ``.h5`` (Keras 2 ``layer_names``/``weight_names`` layout, also inside a
  full-model file's ``model_weights`` group) or Keras 3 ``.weights.h5`` of this backbone.
Missing, unexpected or mis-shaped entries raise a ValueError that lists them.

The input mean belongs to the weights (SPEC §6): the Caffe-converted checkpoint was trained on
BGR minus (104, 117, 128), the reference code's Keras BN-Inception gets BGR minus 255 x the
ImageNet RGB mean (103.53, 116.28, 123.675). A converted ``.npz`` records it (and the
BatchNorm epsilon of its network) under ``meta/``; :func:`read_weight_metadata` reads it back,
with the Caffe values for files that carry none.
"""
import json
import math
import os

import h5py
import keras
import numpy as np

from ccp import layers

BN_EPSILON = 1e-5
# PyTorch's BatchNorm momentum 0.1 is Keras' 0.9 (moving = 0.9 * moving + 0.1 * batch).
BN_MOMENTUM = 0.9
NUM_FEATURES = 1024
DEFAULT_WEIGHTS_FILE = "bn_inception_imagenet.npz"
WEIGHTS_DIR_ENV = "CCP_WEIGHTS_DIR"
# Per-channel input means, BGR order, 0..255 scale (SPEC §6).
CAFFE_BGR_MEAN = (104.0, 117.0, 128.0)
REFERENCE_BGR_MEAN = tuple(255.0 * m for m in (0.406, 0.456, 0.485))  # ImageNet RGB, reversed
META_PREFIX = "meta/"
META_INPUT_MEAN = META_PREFIX + "input_mean_bgr"
META_BN_EPSILON = META_PREFIX + "bn_epsilon"

# Inception blocks of the checkpoint:
#   (name, 1x1, (3x3 reduce, 3x3), (double 3x3 reduce, double 3x3 #1, double 3x3 #2),
#    pool type, pool projection, stride).
# Stride-2 blocks have no 1x1 branch and no pool projection: their pool branch is a ceil-mode
# 3x3/stride-2 max pool of the block input.
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


def _ceil_pool_size(size, pool=3, stride=2):
    return math.ceil((size - pool) / stride) + 1


def feature_map_sizes(image_size):
    """Spatial sizes of BN-Inception for a square input of side ``image_size``.

    Returns:
      dict with the sides after ``conv1`` (7x7/2), ``pool1``, ``pool2`` (= the inception_3c
      input), ``inception_3c``, ``inception_4e`` (= the output side).
    Raises:
      ValueError: the size does not fit the network (a stride-2 block gets an odd input, whose
        convolution and ceil-mode pooling branches differ in size), with nearby sizes that do.
    """
    sizes = _feature_map_sizes(image_size)
    if sizes is None:
        valid = [s for s in range(max(image_size - 16, 1), image_size + 17)
                 if _feature_map_sizes(s) is not None]
        raise ValueError(
            f"BN-Inception cannot take {image_size}x{image_size} images: the stride-2 inception "
            "blocks (3c, 4e) need an even input side. Nearby sizes that work: "
            f"{', '.join(str(s) for s in valid)} (227 and 224 are the usual ones)."
        )
    return sizes


def _feature_map_sizes(image_size):
    if image_size < 16:
        return None
    conv1 = (image_size + 2 * 3 - 7) // 2 + 1
    pool1 = _ceil_pool_size(conv1)
    pool2 = _ceil_pool_size(pool1)
    if pool2 % 2:
        return None
    block3c = pool2 // 2
    if block3c % 2:
        return None
    return {"conv1": conv1, "pool1": pool1, "pool2": pool2, "inception_3c": block3c,
            "inception_4e": block3c // 2}


def _conv_bn_relu(x, filters, kernel, name, stride=1, pad=0, bn_epsilon=BN_EPSILON):
    if pad:
        x = keras.layers.ZeroPadding2D(pad, name=f"{name}_pad")(x)
    x = keras.layers.Conv2D(filters, kernel, strides=stride, padding="valid", name=name)(x)
    x = layers.FusedBatchNormalization(epsilon=bn_epsilon, momentum=BN_MOMENTUM,
                                       name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def _ceil_max_pool(x, name, pool=3, stride=2):
    """Ceil-mode max pooling without padding; ``x`` must be >= 0 (a ReLU output)."""
    size = x.shape[1]
    extra = (_ceil_pool_size(size, pool, stride) - 1) * stride + pool - size
    if extra > 0:
        x = keras.layers.ZeroPadding2D(((0, extra), (0, extra)), name=f"{name}_pad")(x)
    return keras.layers.MaxPooling2D(pool, stride, padding="valid", name=name)(x)


def _inception_block(x, spec, bn_epsilon):
    name, n1x1, (r3, n3), (rd, d1, d2), pool_type, proj, stride = spec
    eps = dict(bn_epsilon=bn_epsilon)
    branches = []
    if n1x1:
        branches.append(_conv_bn_relu(x, n1x1, 1, f"{name}_1x1", **eps))
    b = _conv_bn_relu(x, r3, 1, f"{name}_3x3_reduce", **eps)
    branches.append(_conv_bn_relu(b, n3, 3, f"{name}_3x3", stride=stride, pad=1, **eps))
    b = _conv_bn_relu(x, rd, 1, f"{name}_double_3x3_reduce", **eps)
    b = _conv_bn_relu(b, d1, 3, f"{name}_double_3x3_1", pad=1, **eps)
    branches.append(_conv_bn_relu(b, d2, 3, f"{name}_double_3x3_2", stride=stride, pad=1,
                                  **eps))
    if stride == 2:
        branches.append(_ceil_max_pool(x, f"{name}_pool"))
    else:
        p = keras.layers.ZeroPadding2D(1, name=f"{name}_pool_pad")(x)
        pool_layer = (keras.layers.AveragePooling2D if pool_type == "avg"
                      else keras.layers.MaxPooling2D)
        p = pool_layer(3, 1, padding="valid", name=f"{name}_pool")(p)
        branches.append(_conv_bn_relu(p, proj, 1, f"{name}_pool_proj", **eps))
    return keras.layers.Concatenate(name=f"{name}_output")(branches)


def bn_inception(input_shape=(227, 227, 3), name="bn_inception", bn_epsilon=BN_EPSILON):
    """BN-Inception feature extractor (no classifier), randomly initialized.

    Args:
      input_shape: ``(S, S, 3)``: BGR, 0..255 minus the per-channel mean (the model's
        ``InputNormalization("bn_inception")`` produces it). S must pass
        :func:`feature_map_sizes` (227 -> 7x7 output).
      name: model name.
      bn_epsilon: epsilon of every BatchNorm layer (the weight file's, see
        :func:`read_weight_metadata`).
    Returns:
      keras.Model ``[N, S, S, 3] -> [N, s, s, 1024]`` (s = 7 for S = 227).
    """
    input_shape = tuple(int(d) for d in input_shape)
    if len(input_shape) != 3 or input_shape[2] != 3 or input_shape[0] != input_shape[1]:
        raise ValueError(f"BN-Inception needs a square RGB input shape (S, S, 3), got "
                         f"{input_shape}")
    feature_map_sizes(input_shape[0])
    inputs = keras.Input(input_shape, name="bgr_images")
    eps = dict(bn_epsilon=float(bn_epsilon))
    x = _conv_bn_relu(inputs, 64, 7, "conv1_7x7_s2", stride=2, pad=3, **eps)
    x = _ceil_max_pool(x, "pool1_3x3_s2")
    x = _conv_bn_relu(x, 64, 1, "conv2_3x3_reduce", **eps)
    x = _conv_bn_relu(x, 192, 3, "conv2_3x3", pad=1, **eps)
    x = _ceil_max_pool(x, "pool2_3x3_s2")
    for spec in INCEPTION_BLOCKS:
        x = _inception_block(x, spec, float(bn_epsilon))
    return keras.Model(inputs, x, name=name)


def _weight_names(layer):
    if isinstance(layer, keras.layers.Conv2D):
        return ("kernel", "bias")
    if isinstance(layer, keras.layers.BatchNormalization):
        return ("gamma", "beta", "moving_mean", "moving_variance")
    return ()


def weight_arrays(model):
    """``{"LAYER/WEIGHT": np.ndarray}`` of every conv and BN layer (the checkpoint layout)."""
    arrays = {}
    for layer in model.layers:
        for key, value in zip(_weight_names(layer), layer.get_weights()):
            arrays[f"{layer.name}/{key}"] = value
    return arrays


def default_weights_path():
    """Where ``weights="imagenet"`` looks: ``$CCP_WEIGHTS_DIR`` or ``~/.keras/models``."""
    folder = os.environ.get(WEIGHTS_DIR_ENV) or os.path.join(os.path.expanduser("~"), ".keras",
                                                             "models")
    return os.path.join(folder, DEFAULT_WEIGHTS_FILE)


def resolve_weights_path(weights):
    """``"imagenet"`` -> the converted checkpoint's default location; a path must exist."""
    path = default_weights_path() if weights == "imagenet" else os.fspath(weights)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"BN-Inception weight file {path!r} not found. This machine downloads nothing: get "
            "the PyTorch ImageNet checkpoint bn_inception-52deb4733.pth, convert it with "
            f"`python scripts/convert_bn_inception_pth.py bn_inception-52deb4733.pth "
            f"{default_weights_path()}` (the folder is ${WEIGHTS_DIR_ENV} or ~/.keras/models) "
            "and use weights='imagenet', or pass the path of a .npz/.h5 weight file, or "
            "weights=None to train from scratch."
        )
    return path


def _strip_suffix(name):
    name = name.decode() if isinstance(name, bytes) else str(name)
    return name.split(":")[0]


def _read_h5(path, model):
    """Reads an h5 weight file into ``{"LAYER/WEIGHT": array}`` (see the module docstring)."""
    arrays = {}
    with h5py.File(path, "r") as handle:
        root = handle["model_weights"] if "model_weights" in handle else handle
        if "layer_names" in root.attrs:  # Keras 2 (legacy) layout
            for layer_name in root.attrs["layer_names"]:
                layer_name = _strip_suffix(layer_name)
                group = root[layer_name]
                for weight_name in group.attrs.get("weight_names", []):
                    if isinstance(weight_name, bytes):
                        weight_name = weight_name.decode()
                    short = _strip_suffix(weight_name).split("/")[-1]
                    arrays[f"{layer_name}/{short}"] = np.asarray(group[weight_name])
            return arrays
        if "layers" in root and "vars" in root:  # Keras 3 .weights.h5: layers/<auto>/vars/<i>
            model = model if model is not None else bn_inception((32, 32, 3))
            by_name = {layer.name: layer for layer in model.layers}

            def visit(_, item):
                if isinstance(item, h5py.Group) and item.name.endswith("/vars") and len(item):
                    layer_name = _strip_suffix(item.attrs.get("name", item.name))
                    names = _weight_names(by_name[layer_name]) if layer_name in by_name else ()
                    for index in sorted(item, key=int):
                        key = names[int(index)] if int(index) < len(names) else index
                        arrays[f"{layer_name}/{key}"] = np.asarray(item[index])

            root.visititems(visit)
            return arrays

        def visit_plain(name, item):  # h5py layout: LAYER/WEIGHT datasets
            if isinstance(item, h5py.Dataset):
                arrays[_strip_suffix(name)] = np.asarray(item)

        root.visititems(visit_plain)
    return arrays


def read_weight_file(path, model=None):
    """Reads a BN-Inception weight file into ``{"LAYER/WEIGHT": np.ndarray}``.

    Args:
      path: ``.npz`` or ``.h5`` / ``.hdf5`` / ``.weights.h5`` file (formats: module docstring).
      model: the model to load into (needed to name the unnamed variables of a Keras 3 file).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"BN-Inception weight file {path!r} does not exist")
    if path.endswith(".npz"):
        with np.load(path) as stored:
            return {key: stored[key] for key in stored.files if not key.startswith(META_PREFIX)}
    if path.endswith((".h5", ".hdf5")):
        return _read_h5(path, model)
    raise ValueError(f"BN-Inception weight file {path!r}: expected a .npz or .h5 file")


def _bn_epsilons(config):
    """Every BatchNormalization ``epsilon`` in a Keras model config (nested models too)."""
    found = []
    if isinstance(config, dict):
        if config.get("class_name") in ("BatchNormalization", "FusedBatchNormalization"):
            found.append(float(config.get("config", {}).get("epsilon", 1e-3)))
        for value in config.values():
            found += _bn_epsilons(value)
    elif isinstance(config, list):
        for value in config:
            found += _bn_epsilons(value)
    return found


def keras_model_bn_epsilon(path):
    """The BatchNorm epsilon of a Keras 2 full-model ``.h5`` (its ``model_config``), or None.

    Raises:
      ValueError: the model's BatchNorm layers disagree on epsilon.
    """
    with h5py.File(os.fspath(path), "r") as handle:
        config = handle.attrs.get("model_config")
    if config is None:
        return None
    config = json.loads(config.decode() if isinstance(config, bytes) else config)
    epsilons = sorted(set(_bn_epsilons(config)))
    if not epsilons:
        return None
    if len(epsilons) > 1:
        raise ValueError(f"{os.fspath(path)}: BatchNorm layers with different epsilons "
                         f"{epsilons}; BN-Inception uses one")
    return epsilons[0]


def read_weight_metadata(path):
    """``{"input_mean_bgr": (3 floats), "bn_epsilon": float}`` of a BN-Inception weight file.

    A converted ``.npz`` records both (``meta/input_mean_bgr``, ``meta/bn_epsilon``); other
    files (and older ``.npz``) get the Caffe checkpoint's (104, 117, 128) and 1e-5.
    """
    path = os.fspath(path)
    meta = {"input_mean_bgr": CAFFE_BGR_MEAN, "bn_epsilon": BN_EPSILON}
    if path.endswith(".npz") and os.path.isfile(path):
        with np.load(path) as stored:
            if META_INPUT_MEAN in stored.files:
                mean = np.asarray(stored[META_INPUT_MEAN], np.float64).reshape(-1)
                if mean.shape != (3,):
                    raise ValueError(f"{path}: {META_INPUT_MEAN} must hold 3 values (B, G, R), "
                                     f"got shape {mean.shape}")
                meta["input_mean_bgr"] = tuple(float(m) for m in mean)
            if META_BN_EPSILON in stored.files:
                meta["bn_epsilon"] = float(stored[META_BN_EPSILON])
    return meta


def write_weight_file(arrays, path, input_mean_bgr, bn_epsilon=BN_EPSILON):
    """Writes ``{"LAYER/WEIGHT": array}`` and the metadata to the ``.npz`` at ``path``.

    The file is checked by loading it into a BN-Inception before this returns; a file that
    does not load is removed and the ValueError raised.

    Returns:
      the number of weight arrays written.
    """
    path = os.fspath(path)
    mean = np.asarray(input_mean_bgr, np.float32).reshape(-1)
    if mean.shape != (3,):
        raise ValueError(f"input_mean_bgr must be 3 values (B, G, R), got {input_mean_bgr!r}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    np.savez(path, **arrays, **{META_INPUT_MEAN: mean,
                                META_BN_EPSILON: np.asarray(bn_epsilon, np.float64)})
    try:  # verifies every name and shape; the input size does not matter for the weights
        load_weights(bn_inception((32, 32, 3), bn_epsilon=bn_epsilon), path)
    except ValueError:
        os.remove(path)
        raise
    return len(arrays)


def _show(items, limit=10):
    return ", ".join(items[:limit]) + (f" ... ({len(items)} in all)" if len(items) > limit else "")


def load_weights(model, path):
    """Loads a BN-Inception weight file into ``model`` by layer name.

    Args:
      model: a model built by :func:`bn_inception` (any valid input size: weights do not
        depend on it).
      path: weight file (formats in the module docstring).
    Returns:
      ``model``.
    Raises:
      FileNotFoundError: no such file.
      ValueError: the file's entries do not match the model; the message lists the missing,
        unexpected and mis-shaped ones.
    """
    stored = read_weight_file(path, model)
    expected = weight_arrays(model)
    missing = sorted(set(expected) - set(stored))
    unexpected = sorted(set(stored) - set(expected))
    mismatched = sorted(
        f"{key}: file {tuple(stored[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in set(expected) & set(stored) if stored[key].shape != expected[key].shape
    )
    if missing or unexpected or mismatched:
        raise ValueError(
            f"BN-Inception weight file {os.fspath(path)!r} does not match the model "
            f"({len(expected)} arrays expected as 'LAYER/WEIGHT', e.g. 'conv1_7x7_s2/kernel'): "
            f"missing [{_show(missing)}]; unexpected [{_show(unexpected)}]; "
            f"mismatched [{_show(mismatched)}]"
        )
    for layer in model.layers:
        names = _weight_names(layer)
        if names:
            layer.set_weights([stored[f"{layer.name}/{key}"] for key in names])
    return model


_TORCH_BN_FIELDS = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean",
                    "running_var": "moving_variance"}


def from_torch_state_dict(state_dict):
    """Maps the PyTorch checkpoint's arrays to the ``.npz`` layout of :func:`load_weights`.

    Args:
      state_dict: ``{"conv1_7x7_s2.weight": array [O, I, kh, kw], "conv1_7x7_s2.bias": [O],
        "conv1_7x7_s2_bn.weight"/"bias"/"running_mean"/"running_var": [O], ...}`` as numpy
        arrays. The classifier (``last_linear.*`` / ``fc.*``) and ``num_batches_tracked``
        entries are dropped.
    Returns:
      ``{"conv1_7x7_s2/kernel": array [kh, kw, I, O], "conv1_7x7_s2_bn/moving_mean": ..., ...}``
      as float32.
    Raises:
      ValueError: an entry that is neither a convolution nor a BatchNorm weight.
    """
    arrays = {}
    for key, value in state_dict.items():
        layer, _, field = key.rpartition(".")
        if layer.startswith(("last_linear", "fc")) or field == "num_batches_tracked":
            continue
        value = np.asarray(value, np.float32)
        if layer.endswith("_bn"):
            if field not in _TORCH_BN_FIELDS:
                raise ValueError(f"unexpected BatchNorm entry {key!r} in the checkpoint")
            arrays[f"{layer}/{_TORCH_BN_FIELDS[field]}"] = value
        elif field == "weight" and value.ndim == 4:
            arrays[f"{layer}/kernel"] = np.transpose(value, (2, 3, 1, 0))  # OIHW -> HWIO
        elif field == "bias" and value.ndim == 1:
            arrays[f"{layer}/bias"] = value
        else:
            raise ValueError(f"unexpected entry {key!r} with shape {value.shape} in the checkpoint")
    return arrays
