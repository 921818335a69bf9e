"""Embedding models (SPEC §1): backbones and the embedding-model builder.

``build_embedding_model(backbone=..., embedding_size=128, weights=None, ...)`` is the entry
point; the backbones live in ``bn_inception``, ``resnet`` and ``small_cnn``.
``MetricModel(embedder, loss, projection=None)`` trains any embedder with a ccp loss through
Keras' own ``compile`` / ``fit`` (``metric_model``).
"""
from ccp.layers import batchnorm_layers
from ccp.models.embedding import (
    BACKBONES,
    Backbone,
    build_embedding_model,
    freeze_batchnorm,
    load_embedding_weights,
    model_image_size,
)
from ccp.models.metric_model import MetricModel
from ccp.models.preprocessing import InputNormalization

__all__ = [
    "BACKBONES",
    "Backbone",
    "InputNormalization",
    "MetricModel",
    "batchnorm_layers",
    "build_embedding_model",
    "freeze_batchnorm",
    "load_embedding_weights",
    "model_image_size",
]
