"""Embedding model (SPEC §1): input normalization -> backbone -> global pooling -> Dense(D).

The model takes RGB float32 images ``[N, S, S, 3]`` with values 0..255 and returns the RAW
embedding ``[N, D]``: losses and evaluation normalize it themselves. Layers, in order:
``images`` (Input) -> ``input_normalization`` (the backbone's input convention, a serializable
ccp layer) -> the backbone (a nested keras.Model named after it) -> ``global_pooling``
(``ccp.layers.GlobalPooling``) -> ``embedding`` (Dense(D), no bias by default as the reference's
head, float32 even under mixed precision).

The input side S (the model's static input shape) is what the evaluation preprocessing and the
exporter need: :func:`model_image_size` reads it back.
"""
import dataclasses
import numbers
import os
from typing import Callable

import h5py
import keras

from ccp import layers as ccp_layers
from ccp.models import bn_inception as bn_inception_lib
from ccp.models import efficientnet as efficientnet_lib
from ccp.models import resnet as resnet_lib
from ccp.models import small_cnn as small_cnn_lib
from ccp.models.preprocessing import InputNormalization


@dataclasses.dataclass(frozen=True)
class Backbone:
    """A registered backbone.

    Attributes:
      build: ``build(input_shape, weights) -> keras.Model [N, S, S, 3] -> [N, s, s, F]``;
        ``weights`` is None, "imagenet" or a path (already validated as a string).
      convention: the ``InputNormalization`` convention its input needs.
      default_image_size: S when the caller gives none.
      num_features: F, the channels of its output feature map.
      input_mean: ``input_mean(weights) -> BGR mean (3 floats) or None`` (None: the
        convention's), for backbones whose weight files carry their preprocessing.
    """

    build: Callable
    convention: str
    default_image_size: int
    num_features: int
    input_mean: Callable = None


def _build_bn_inception(input_shape, weights):
    if weights is None:
        return bn_inception_lib.bn_inception(input_shape)
    path = bn_inception_lib.resolve_weights_path(weights)
    meta = bn_inception_lib.read_weight_metadata(path)
    backbone = bn_inception_lib.bn_inception(input_shape, bn_epsilon=meta["bn_epsilon"])
    bn_inception_lib.load_weights(backbone, path)
    return backbone


def _bn_inception_input_mean(weights):
    """The weight file's BGR mean (SPEC §6: the mean follows the weights); None without."""
    if weights is None:
        return None
    path = bn_inception_lib.resolve_weights_path(weights)
    return bn_inception_lib.read_weight_metadata(path)["input_mean_bgr"]


def _build_resnet50(input_shape, weights):
    return resnet_lib.resnet50(input_shape, weights=weights)


def _build_small_cnn(input_shape, weights):
    return small_cnn_lib.small_cnn(input_shape, weights=weights)


def _efficientnet_builder(variant):
    def build(input_shape, weights):
        return efficientnet_lib.efficientnet(variant, input_shape, weights=weights)
    return build


BACKBONES = {
    "bn_inception": Backbone(_build_bn_inception, "bn_inception", 227,
                             bn_inception_lib.NUM_FEATURES, _bn_inception_input_mean),
    "resnet50": Backbone(_build_resnet50, "resnet50", 227, resnet_lib.NUM_FEATURES),
    "small_cnn": Backbone(_build_small_cnn, "unit", 32, small_cnn_lib.DEFAULT_WIDTHS[-1]),
    **{f"efficientnet_{variant}": Backbone(_efficientnet_builder(variant), "raw", size, features)
       for variant, (_, size, features) in efficientnet_lib.VARIANTS.items()},
}


def freeze_batchnorm(model):
    """Freezes every BatchNormalization layer of ``model`` (SPEC §1); returns how many.

    In Keras 3 a BatchNormalization layer with ``trainable=False`` runs in inference mode even
    when called with ``training=True``: it normalizes with its moving statistics, does not
    update them, and its gamma/beta are not trainable variables.
    """
    layers = ccp_layers.batchnorm_layers(model)
    for layer in layers:
        layer.trainable = False
    return len(layers)


_freeze_batchnorm = freeze_batchnorm  # build_embedding_model's argument shadows the name


def _check_weights(weights):
    if weights is None or weights == "imagenet":
        return weights
    if isinstance(weights, str) and weights.lower() in ("none", ""):
        return None
    if isinstance(weights, (str, os.PathLike)):
        return os.fspath(weights)
    raise TypeError(f"weights must be None, 'imagenet' or a file path, got {weights!r}")


def _check_positive_int(value, what):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{what} must be a positive int, got {value!r}")
    return int(value)


EMBEDDING_LAYER = "embedding"


def build_embedding_model(backbone="bn_inception", embedding_size=128, weights=None,
                          pooling="avg", freeze_batchnorm=None, image_size=None, name=None,
                          embedding_bias=False):
    """Builds the embedding model of SPEC §1.

    Args:
      backbone: a key of :data:`BACKBONES`: "bn_inception", "resnet50", "small_cnn" or
        "efficientnet_b0" .. "efficientnet_b7" (keras.applications; weights a no-top .h5 path).
      embedding_size: D, units of the Dense "embedding" layer.
      weights: None (random init, train from scratch), "imagenet" (BN-Inception: the converted
        checkpoint at ``$CCP_WEIGHTS_DIR/bn_inception_imagenet.npz`` or
        ``~/.keras/models/...``; ResNet-50: Keras' download), or the path of a local weight file
        of the backbone (BN-Inception .npz/.h5, ResNet-50 .h5/.weights.h5, small CNN
        .weights.h5) or of a whole embedding model of the same architecture (a ``.weights.h5``
        saved from a model this function built: backbone, head and all, e.g. to fine-tune
        your own checkpoint; input normalization as the backbone's convention). The string
        "none" means None. A BN-Inception ``.npz`` written by
        ``scripts/convert_bn_inception_pth.py`` also sets the input mean it was trained with
        (Caffe (104, 117, 128) or the reference's 255 x ImageNet mean) and its BatchNorm
        epsilon.
      pooling: "avg", "max" or "avg+max" (the sum of both).
      freeze_batchnorm: freeze the backbone's BatchNorm layers (inference mode, not trained);
        None = True exactly when pretrained weights are loaded.
      image_size: the input side S; None = 227 for the ImageNet backbones, 32 for small_cnn.
      name: model name; None = "<backbone>_embedding".
      embedding_bias: give the Dense embedding head a bias. False (default) is the reference's
        head (SPEC §1); weights saved from a model with a bias need True
        (:func:`load_embedding_weights` says so).
    Returns:
      keras.Model: RGB float32 images ``[N, S, S, 3]`` (values 0..255) -> raw embeddings
      float32 ``[N, D]``.
    Raises:
      ValueError / TypeError: an unknown backbone or pooling, or a malformed argument.
      FileNotFoundError: a weight file that does not exist (the message says where to put it).
    """
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; valid: {', '.join(sorted(BACKBONES))}")
    spec = BACKBONES[backbone]
    embedding_size = _check_positive_int(embedding_size, "embedding_size")
    weights = _check_weights(weights)
    if pooling not in ccp_layers.POOLING_MODES:
        raise ValueError(f"pooling must be one of {ccp_layers.POOLING_MODES}, got {pooling!r}")
    if freeze_batchnorm not in (None, True, False):
        raise TypeError(f"freeze_batchnorm must be None, True or False, got {freeze_batchnorm!r}")
    size = _check_positive_int(spec.default_image_size if image_size is None else image_size,
                               "image_size")
    if name is not None and not isinstance(name, str):
        raise TypeError(f"name must be a string, got {name!r}")
    if not isinstance(embedding_bias, bool):
        raise TypeError(f"embedding_bias must be True or False, got {embedding_bias!r}")

    whole_model_file = weights not in (None, "imagenet") and is_embedding_weights_file(weights)
    backbone_weights = None if whole_model_file else weights
    inputs = keras.Input((size, size, 3), dtype="float32", name="images")
    features_model = spec.build((size, size, 3), backbone_weights)
    mean = spec.input_mean(backbone_weights) if spec.input_mean is not None else None
    normalized = InputNormalization(spec.convention, mean=mean,
                                    name="input_normalization")(inputs)
    if freeze_batchnorm is None:
        freeze_batchnorm = weights is not None
    if freeze_batchnorm:
        _freeze_batchnorm(features_model)
    features = features_model(normalized)
    pooled = ccp_layers.GlobalPooling(pooling, name="global_pooling")(features)
    # float32 even under a mixed-precision policy: losses and metrics get float32 embeddings.
    embeddings = keras.layers.Dense(embedding_size, use_bias=embedding_bias, dtype="float32",
                                    name=EMBEDDING_LAYER)(pooled)
    model = keras.Model(inputs, embeddings, name=name or f"{backbone}_embedding")
    if whole_model_file:
        load_embedding_weights(model, weights)
    return model


def is_embedding_weights_file(path):
    """Whether ``path`` is a Keras 3 ``.weights.h5`` of a whole embedding model (saved from a
    model of :func:`build_embedding_model`, e.g. a runner's ``model.weights.h5``) rather than
    of a backbone: such a file holds the ``input_normalization`` layer."""
    path = os.fspath(path)
    if not path.endswith(".h5") or not os.path.isfile(path):
        return False
    try:
        with h5py.File(path, "r") as handle:
            return "layers/input_normalization" in handle
    except OSError:
        return False


def _stored_embedding_bias(path):
    """Whether the Keras 3 ``.weights.h5`` at ``path`` holds an embedding bias (None: unknown).

    The embedding head is the model's only top-level Dense layer, stored under
    ``layers/dense/vars`` (kernel, then bias when there is one).
    """
    try:
        with h5py.File(path, "r") as handle:
            group = handle.get("layers/dense/vars")
            return None if group is None else len(group) == 2
    except OSError:
        return None


def load_embedding_weights(model, path):
    """``model.load_weights(path)`` for a model of :func:`build_embedding_model`.

    Loading weights saved from a model whose embedding head had a bias into one built without
    (or the reverse) fails with a one-line error naming the ``--embedding_bias`` flag.

    Args:
      model: a model built by :func:`build_embedding_model`.
      path: a Keras ``.weights.h5`` file saved from such a model.
    Returns:
      ``model``.
    Raises:
      ValueError: the file's head and the model's disagree on the bias, or another mismatch
        (Keras' own message).
    """
    path = os.fspath(path)
    has_bias = model.get_layer(EMBEDDING_LAYER).use_bias
    stored = _stored_embedding_bias(path) if path.endswith(".h5") else None
    if stored is not None and stored != has_bias:
        if stored:
            raise ValueError(
                f"{path}: these weights have an embedding bias but the model was built without "
                "one; build it with embedding_bias=True (flag --embedding_bias)")
        raise ValueError(
            f"{path}: these weights have no embedding bias but the model was built with one; "
            "build it with embedding_bias=False (flag --noembedding_bias)")
    model.load_weights(path)
    return model


def model_image_size(model):
    """The input side S of an embedding model (from its static input shape ``[N, S, S, 3]``)."""
    shape = tuple(model.input_shape)
    if len(shape) != 4 or shape[1] is None or shape[1] != shape[2] or shape[3] != 3:
        raise ValueError(f"expected a model with a square static RGB input [N, S, S, 3], got "
                         f"input shape {shape}")
    return int(shape[1])
