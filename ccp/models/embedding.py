"""Embedding model: input normalization -> backbone -> global pooling -> Dense(D) "embedding".

The model takes RGB float32 images ``[N, S, S, 3]`` with values in 0..255 and returns the RAW
embedding ``[N, D]`` (SPEC §1): losses and evaluation normalize it themselves.
"""
import os

import keras

from ccp import layers as ccp_layers
from ccp.models import bn_inception as bn_inception_lib
from ccp.models import resnet as resnet_lib
from ccp.models import small_cnn as small_cnn_lib
from ccp.models.preprocessing import InputNormalization


def _build_bn_inception(input_shape, weights):
    backbone = bn_inception_lib.bn_inception(input_shape)
    if weights is not None:
        bn_inception_lib.load_weights(backbone, bn_inception_lib.resolve_weights_path(weights))
    return backbone


def _build_resnet50(input_shape, weights):
    return resnet_lib.resnet50(input_shape, weights=weights)


def _build_small_cnn(input_shape, weights):
    if weights is not None:
        raise ValueError("small_cnn has no pretrained weights: use weights=None")
    return small_cnn_lib.small_cnn(input_shape)


# name -> (builder(input_shape, weights), input convention, default image size)
BACKBONES = {
    "bn_inception": (_build_bn_inception, "bn_inception", 227),
    "resnet50": (_build_resnet50, "resnet50", 227),
    "small_cnn": (_build_small_cnn, "unit", 32),
}


def freeze_batchnorm(model):
    """Makes every BatchNormalization layer non-trainable (Keras 3: inference mode, SPEC §1)."""
    count = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
            count += 1
    return count


def build_embedding_model(backbone="bn_inception", embedding_size=128, weights=None,
                          pooling="avg", freeze_batchnorm=None, image_size=None, name=None):
    """Builds the embedding model of SPEC §1.

    Args:
      backbone: "bn_inception", "resnet50" or "small_cnn".
      embedding_size: D.
      weights: None (random init), "imagenet", or a local weight file of the backbone.
      pooling: "avg", "max" or "avg+max" (sum of both).
      freeze_batchnorm: freeze the backbone's BatchNorm layers; default True exactly when
        pretrained weights are loaded.
      image_size: input side S (default 227, or 32 for small_cnn).
      name: model name.
    Returns:
      keras.Model: RGB float32 ``[N, S, S, 3]`` (0..255) -> raw embeddings float32 ``[N, D]``.
    """
    return _build(backbone, embedding_size, weights, pooling, freeze_batchnorm, image_size, name)


def _build(backbone, embedding_size, weights, pooling, freeze_bn, image_size, name):
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; valid: {', '.join(BACKBONES)}")
    if isinstance(weights, str) and weights.lower() == "none":
        weights = None
    if isinstance(weights, os.PathLike):
        weights = os.fspath(weights)
    if embedding_size < 1:
        raise ValueError(f"embedding_size must be >= 1, got {embedding_size}")
    build, convention, default_size = BACKBONES[backbone]
    size = int(image_size or default_size)
    inputs = keras.Input((size, size, 3), name="images")
    normalized = InputNormalization(convention, name="input_normalization")(inputs)
    features_model = build(normalized.shape[1:], weights)
    if freeze_bn is None:
        freeze_bn = weights is not None
    if freeze_bn:
        freeze_batchnorm(features_model)
    features = features_model(normalized)
    pooled = ccp_layers.GlobalPooling(pooling, name="global_pooling")(features)
    embedding = keras.layers.Dense(embedding_size, name="embedding")(pooled)
    outputs = keras.layers.Activation("linear", dtype="float32", name="embedding_float32")(embedding)
    model = keras.Model(inputs, outputs, name=name or f"{backbone}_embedding")
    return model


def model_image_size(model):
    """The input side S of a model built here (its static input shape)."""
    shape = model.input_shape
    if shape[1] is None or shape[1] != shape[2]:
        raise ValueError(f"expected a square static input shape, got {shape}")
    return int(shape[1])


__all__ = ["BACKBONES", "build_embedding_model", "freeze_batchnorm", "model_image_size"]
