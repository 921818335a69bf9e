"""Embedding models (SPEC §1): backbones and the embedding-model builder."""
from ccp.models.embedding import BACKBONES, build_embedding_model, freeze_batchnorm, model_image_size
from ccp.models.preprocessing import InputNormalization

__all__ = ["BACKBONES", "InputNormalization", "build_embedding_model", "freeze_batchnorm",
           "model_image_size"]
