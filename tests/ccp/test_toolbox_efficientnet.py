"""EfficientNet backbones (keras.applications, random init here) in the embedding model."""
import keras
import numpy as np
import pytest

from ccp import models
from ccp.models import efficientnet


def test_efficientnet_b0_embedding_model_small_input():
    model = models.build_embedding_model("efficientnet_b0", embedding_size=8, image_size=32)
    assert model.get_layer("input_normalization").convention == "raw"
    images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    out = model(images, training=False).numpy()
    assert out.shape == (2, 8) and np.all(np.isfinite(out))
    backbone = model.get_layer("efficientnet_b0")
    assert backbone.output.shape[-1] == efficientnet.VARIANTS["b0"][2] == 1280
    # the raw convention feeds 0..255 unchanged: the backbone's own first layers rescale
    np.testing.assert_array_equal(
        model.get_layer("input_normalization")(images).numpy(), images)


def test_efficientnet_registry_and_errors():
    sizes = {k: v[1] for k, v in efficientnet.VARIANTS.items()}
    assert sizes == {"b0": 224, "b1": 240, "b2": 260, "b3": 300, "b4": 380, "b5": 456,
                     "b6": 528, "b7": 600}  # keras.applications' native sides
    for k in sizes:
        assert models.BACKBONES[f"efficientnet_{k}"].default_image_size == sizes[k]
        assert hasattr(keras.applications, efficientnet.VARIANTS[k][0])
    with pytest.raises(FileNotFoundError, match="efficientnetb3_notop.h5"):
        efficientnet.efficientnet("b3", (32, 32, 3), weights="/no/such/file.h5")
    with pytest.raises(ValueError, match="unknown EfficientNet variant"):
        efficientnet.efficientnet("b9")
