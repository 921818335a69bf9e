"""Backbones, embedding model, weight loading and frozen BatchNorm (SPEC §1)."""
import keras
import numpy as np
import pytest
import tensorflow as tf

import ccp
from ccp.models import bn_inception, preprocessing

# BN-Inception convolutions as listed in the Caffe prototxt: (in, out, kernel). Written out
# independently of the model code; every conv has a bias and a BN (gamma, beta, mean, var).
_BLOCKS = [  # in, 1x1, 3x3 reduce, 3x3, double reduce, double, pool proj
    (192, 64, 64, 64, 64, 96, 32), (256, 64, 64, 96, 64, 96, 64), (320, 0, 128, 160, 64, 96, 0),
    (576, 224, 64, 96, 96, 128, 128), (576, 192, 96, 128, 96, 128, 128),
    (576, 160, 128, 160, 128, 160, 128), (608, 96, 128, 192, 160, 192, 128),
    (608, 0, 128, 192, 192, 256, 0), (1056, 352, 192, 320, 160, 224, 128),
    (1024, 352, 192, 320, 192, 224, 128),
]


def _caffe_bn_inception_weight_count():
    convs = [(3, 64, 7), (64, 64, 1), (64, 192, 3)]
    for cin, n1, r3, n3, rd, d, proj in _BLOCKS:
        if n1:
            convs.append((cin, n1, 1))
        convs += [(cin, r3, 1), (r3, n3, 3), (cin, rd, 1), (rd, d, 3), (d, d, 3)]
        if proj:
            convs.append((cin, proj, 1))
    return sum(k * k * i * o + o + 4 * o for i, o, k in convs)


def test_bn_inception_shape_and_weight_count():
    backbone = bn_inception.bn_inception((227, 227, 3))
    assert backbone.output_shape == (None, 7, 7, 1024)
    assert backbone.count_params() == _caffe_bn_inception_weight_count() == 10_290_272
    assert backbone.get_layer("inception_5b_pool_proj_bn").epsilon == pytest.approx(1e-5)


def test_bn_inception_npz_round_trip_and_mismatch(tmp_path):
    source = bn_inception.bn_inception((64, 64, 3))
    rng = np.random.default_rng(0)
    arrays = {k: rng.normal(size=v.shape).astype(np.float32) * 0.05
              for k, v in bn_inception.weight_arrays(source).items()}
    for key in arrays:
        if key.endswith("moving_variance"):
            arrays[key] = np.abs(arrays[key]) + 1.0
    path = tmp_path / "bn.npz"
    np.savez(path, **arrays)
    target = bn_inception.load_weights(bn_inception.bn_inception((64, 64, 3)), str(path))
    bn_inception.load_weights(source, str(path))
    x = rng.normal(size=(2, 64, 64, 3)).astype(np.float32)
    np.testing.assert_allclose(target(x).numpy(), source(x).numpy(), rtol=1e-5, atol=1e-5)
    broken = dict(arrays)
    broken.pop("conv1_7x7_s2/bias")
    broken["conv2_3x3/kernel"] = np.zeros((1, 1, 1, 1), np.float32)
    np.savez(tmp_path / "broken.npz", **broken)
    with pytest.raises(ValueError, match=r"missing \[conv1_7x7_s2/bias\].*conv2_3x3/kernel"):
        bn_inception.load_weights(bn_inception.bn_inception((64, 64, 3)), str(tmp_path / "broken.npz"))


def test_missing_weight_files_say_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.setenv("CCP_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="convert_bn_inception_pth.py"):
        ccp.models.build_embedding_model("bn_inception", weights="imagenet", image_size=64)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ccp.models.build_embedding_model("resnet50", weights=str(tmp_path / "nope.h5"), image_size=64)
    with pytest.raises(ValueError, match="small_cnn"):
        ccp.models.build_embedding_model("vgg")


def test_resnet50_from_keras_applications():
    model = ccp.models.build_embedding_model("resnet50", embedding_size=32, image_size=64)
    assert model.output_shape == (None, 32)
    # ResNet-50 without its classifier has 23,587,712 weights (Keras applications).
    assert model.get_layer("resnet50").count_params() == 23_587_712


@pytest.mark.parametrize("pooling", ["avg", "avg+max"])
def test_embedding_model_outputs_raw_float32_embeddings(pooling):
    model = ccp.models.build_embedding_model("small_cnn", embedding_size=12, pooling=pooling)
    images = np.random.default_rng(0).uniform(0, 255, size=(3, 32, 32, 3)).astype(np.float32)
    out = model(images, training=False)
    assert out.shape == (3, 12) and out.dtype == tf.float32
    assert model.get_layer("embedding").units == 12
    assert np.linalg.norm(out.numpy(), axis=1).max() != pytest.approx(1.0)  # not normalized


def test_input_normalization_conventions_and_config():
    pixel = np.array([[[[10.0, 20.0, 30.0]]]], np.float32)  # RGB
    bn = preprocessing.InputNormalization("bn_inception")(pixel).numpy()
    np.testing.assert_allclose(bn[0, 0, 0], [30 - 104, 20 - 117, 10 - 128])
    res = preprocessing.InputNormalization("resnet50")(pixel).numpy()
    expected = keras.applications.resnet50.preprocess_input(pixel.copy())
    np.testing.assert_allclose(res, expected, atol=1e-4)
    np.testing.assert_allclose(preprocessing.InputNormalization("unit")(pixel).numpy(), pixel / 255)
    layer = preprocessing.InputNormalization("resnet50")
    clone = keras.layers.deserialize(keras.layers.serialize(layer))
    assert clone.convention == "resnet50"


def _train_step(model, images):
    optimizer = keras.optimizers.SGD(0.1)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.square(model(images, training=True)))
    variables = model.trainable_variables
    optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))


@pytest.mark.parametrize("frozen", [True, False])
def test_frozen_batchnorm_stays_fixed(frozen):
    model = ccp.models.build_embedding_model("small_cnn", embedding_size=8, freeze_batchnorm=frozen)
    bn_layers = [l for l in model._flatten_layers() if isinstance(l, keras.layers.BatchNormalization)]
    before = [[np.asarray(w).copy() for w in l.weights] for l in bn_layers]
    images = np.random.default_rng(1).uniform(0, 255, size=(4, 32, 32, 3)).astype(np.float32)
    _train_step(model, images)
    after = [[np.asarray(w) for w in l.weights] for l in bn_layers]
    unchanged = all(np.array_equal(a, b) for la, lb in zip(before, after) for a, b in zip(la, lb))
    assert unchanged == frozen
    # The embedding layer trains either way.
    assert model.get_layer("embedding").trainable


def test_saved_weights_reload_into_a_fresh_model(tmp_path):
    model = ccp.models.build_embedding_model("small_cnn", embedding_size=8)
    path = str(tmp_path / "m.weights.h5")
    model.save_weights(path)
    fresh = ccp.models.build_embedding_model("small_cnn", embedding_size=8)
    fresh.load_weights(path)
    images = np.random.default_rng(2).uniform(0, 255, size=(2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(fresh(images).numpy(), model(images).numpy(), atol=1e-6)


def test_torch_state_dict_conversion():
    source = bn_inception.bn_inception((64, 64, 3))
    rng = np.random.default_rng(3)
    state = {"last_linear.weight": np.zeros((1000, 1024)), "last_linear.bias": np.zeros(1000)}
    torch_names = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean",
                   "moving_variance": "running_var"}
    expected = {}
    for key, value in bn_inception.weight_arrays(source).items():
        layer, field = key.split("/")
        array = rng.normal(size=value.shape).astype(np.float32)
        expected[key] = array
        if field == "kernel":
            state[f"{layer}.weight"] = np.transpose(array, (3, 2, 0, 1))  # HWIO -> OIHW
        elif field == "bias" and not layer.endswith("_bn"):
            state[f"{layer}.bias"] = array
        else:
            state[f"{layer}.{torch_names[field]}"] = array
            state[f"{layer}.num_batches_tracked"] = np.array(0)
    converted = bn_inception.from_torch_state_dict(state)
    assert set(converted) == set(expected)
    for key in expected:
        np.testing.assert_array_equal(converted[key], expected[key])
