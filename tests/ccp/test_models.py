"""Backbones, embedding model, weight loading and frozen BatchNorm (SPEC §1)."""
import importlib.util
import json
import pathlib
import sys

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

import ccp
from ccp.models import bn_inception, preprocessing

REPO = pathlib.Path(__file__).resolve().parents[2]

# BN-Inception as published in the Caffe prototxt / the converted PyTorch checkpoint, written
# out independently of ccp's model code: per block (name, input channels, 1x1, 3x3 reduce, 3x3,
# double 3x3 reduce, double 3x3, pool projection, pool type, stride).
CAFFE_BLOCKS = [
    ("inception_3a", 192, 64, 64, 64, 64, 96, 32, "avg", 1),
    ("inception_3b", 256, 64, 64, 96, 64, 96, 64, "avg", 1),
    ("inception_3c", 320, 0, 128, 160, 64, 96, 0, "max", 2),
    ("inception_4a", 576, 224, 64, 96, 96, 128, 128, "avg", 1),
    ("inception_4b", 576, 192, 96, 128, 96, 128, 128, "avg", 1),
    ("inception_4c", 576, 160, 128, 160, 128, 160, 128, "avg", 1),
    ("inception_4d", 608, 96, 128, 192, 160, 192, 128, "avg", 1),
    ("inception_4e", 608, 0, 128, 192, 192, 256, 0, "max", 2),
    ("inception_5a", 1056, 352, 192, 320, 160, 224, 128, "avg", 1),
    ("inception_5b", 1024, 352, 192, 320, 192, 224, 128, "max", 1),
]


def caffe_convolutions():
    """[(name, in, out, kernel, stride, pad)] of every convolution, in checkpoint order."""
    convs = [("conv1_7x7_s2", 3, 64, 7, 2, 3), ("conv2_3x3_reduce", 64, 64, 1, 1, 0),
             ("conv2_3x3", 64, 192, 3, 1, 1)]
    for name, cin, n1, r3, n3, rd, d, proj, _, stride in CAFFE_BLOCKS:
        if n1:
            convs.append((f"{name}_1x1", cin, n1, 1, 1, 0))
        convs += [(f"{name}_3x3_reduce", cin, r3, 1, 1, 0), (f"{name}_3x3", r3, n3, 3, stride, 1),
                  (f"{name}_double_3x3_reduce", cin, rd, 1, 1, 0),
                  (f"{name}_double_3x3_1", rd, d, 3, 1, 1),
                  (f"{name}_double_3x3_2", d, d, 3, stride, 1)]
        if proj:
            convs.append((f"{name}_pool_proj", cin, proj, 1, 1, 0))
    return convs


def caffe_weight_shapes():
    shapes = {}
    for name, cin, cout, k, _, _ in caffe_convolutions():
        shapes[f"{name}/kernel"] = (k, k, cin, cout)
        shapes[f"{name}/bias"] = (cout,)
        for field in ("gamma", "beta", "moving_mean", "moving_variance"):
            shapes[f"{name}_bn/{field}"] = (cout,)
    return shapes


# Conv weights + biases + BN (gamma, beta, mean, variance) of the table above; the PyTorch
# checkpoint's parameters without the classifier plus its BN running statistics.
BN_INCEPTION_WEIGHTS = 10_290_272


def random_bn_inception_arrays(rng, shapes):
    arrays = {}
    for key, shape in shapes.items():
        if key.endswith("/kernel"):
            fan_in = np.prod(shape[:3])
            arrays[key] = rng.normal(0, np.sqrt(2.0 / fan_in), size=shape).astype(np.float32)
        elif key.endswith(("moving_variance", "gamma")):
            arrays[key] = rng.uniform(0.5, 1.5, size=shape).astype(np.float32)
        else:
            arrays[key] = rng.normal(0, 0.1, size=shape).astype(np.float32)
    return arrays


@pytest.fixture(scope="module")
def bn32():
    """Two BN-Inception backbones at 32x32 (the smallest valid size; weights are size-free)."""
    return bn_inception.bn_inception((32, 32, 3)), bn_inception.bn_inception((32, 32, 3))


def test_bn_inception_layers_follow_the_caffe_checkpoint():
    backbone = bn_inception.bn_inception((227, 227, 3))
    assert backbone.output_shape == (None, 7, 7, 1024)
    shapes = {k: tuple(v.shape) for k, v in bn_inception.weight_arrays(backbone).items()}
    assert shapes == caffe_weight_shapes()
    assert sum(np.prod(s) for s in caffe_weight_shapes().values()) == BN_INCEPTION_WEIGHTS
    assert backbone.count_params() == BN_INCEPTION_WEIGHTS
    bns = [layer for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(bns) == len(caffe_convolutions()) == 69
    assert all(layer.epsilon == pytest.approx(1e-5) for layer in bns)


def test_bn_inception_image_sizes():
    assert bn_inception.feature_map_sizes(227) == {
        "conv1": 114, "pool1": 57, "pool2": 28, "inception_3c": 14, "inception_4e": 7}
    assert bn_inception.feature_map_sizes(224)["inception_4e"] == 7
    with pytest.raises(ValueError, match=r"cannot take 120x120.*128"):
        ccp.models.build_embedding_model("bn_inception", image_size=120)


def test_bn_inception_matches_the_pytorch_checkpoint_model(tmp_path, bn32):
    """Random weights in a PyTorch BN-Inception (ceil-mode pools, count_include_pad average
    pools, as the checkpoint's model) -> the conversion script -> ccp's Keras model: the same
    features. 64x64 inputs make the ceil-mode pools hang over the border (32 -> 16 -> 8)."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional

    class TorchBNInception(torch.nn.Module):
        def __init__(self):
            super().__init__()
            for name, cin, cout, k, stride, pad in caffe_convolutions():
                self.add_module(name, torch.nn.Conv2d(cin, cout, k, stride, pad))
                self.add_module(f"{name}_bn", torch.nn.BatchNorm2d(cout, eps=1e-5))
            self.add_module("last_linear", torch.nn.Linear(1024, 1000))

        def cbr(self, name, x):
            return F.relu(getattr(self, f"{name}_bn")(getattr(self, name)(x)))

        def forward(self, x):
            x = self.cbr("conv1_7x7_s2", x)
            x = F.max_pool2d(x, 3, 2, ceil_mode=True)
            x = self.cbr("conv2_3x3", self.cbr("conv2_3x3_reduce", x))
            x = F.max_pool2d(x, 3, 2, ceil_mode=True)
            for name, _, n1, _, _, _, _, proj, pool, stride in CAFFE_BLOCKS:
                out = [self.cbr(f"{name}_1x1", x)] if n1 else []
                out.append(self.cbr(f"{name}_3x3", self.cbr(f"{name}_3x3_reduce", x)))
                d = self.cbr(f"{name}_double_3x3_1", self.cbr(f"{name}_double_3x3_reduce", x))
                out.append(self.cbr(f"{name}_double_3x3_2", d))
                if stride == 2:
                    out.append(F.max_pool2d(x, 3, 2, ceil_mode=True))
                elif pool == "avg":
                    p = F.avg_pool2d(x, 3, 1, 1, ceil_mode=True, count_include_pad=True)
                    out.append(self.cbr(f"{name}_pool_proj", p))
                else:
                    p = F.max_pool2d(x, 3, 1, 1, ceil_mode=True)
                    out.append(self.cbr(f"{name}_pool_proj", p))
                x = torch.cat(out, 1)
            return x

    torch.manual_seed(0)
    reference = TorchBNInception().eval()
    with torch.no_grad():
        for module in reference.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
    checkpoint = tmp_path / "bn_inception-test.pth"
    torch.save(reference.state_dict(), checkpoint)
    converted = tmp_path / "converted.npz"
    script = _load_converter()
    assert script.main([str(checkpoint), str(converted)]) == 0

    model = bn_inception.load_weights(bn_inception.bn_inception((64, 64, 3)), str(converted))
    images = np.random.default_rng(0).normal(0, 50, size=(2, 64, 64, 3)).astype(np.float32)
    with torch.no_grad():
        expected = reference(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
    tf32 = tf.config.experimental.tensor_float_32_execution_enabled()
    tf.config.experimental.enable_tensor_float_32_execution(False)  # full float32 on GPUs too
    try:
        got = model(images, training=False).numpy().transpose(0, 3, 1, 2)
    finally:
        tf.config.experimental.enable_tensor_float_32_execution(tf32)
    assert got.shape == expected.shape == (2, 1024, 2, 2)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def _load_converter():
    spec = importlib.util.spec_from_file_location(
        "convert_bn_inception_pth", REPO / "scripts" / "convert_bn_inception_pth.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_converter_without_torch_says_how_to_get_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    (tmp_path / "x.pth").write_bytes(b"")
    assert _load_converter().main([str(tmp_path / "x.pth"), str(tmp_path / "o.npz")]) == 1
    assert "pip install torch" in capsys.readouterr().err
    assert not (tmp_path / "o.npz").exists()


def _write_plain_h5(path, arrays):
    with h5py.File(path, "w") as handle:
        for key, value in arrays.items():
            handle.create_dataset(key, data=value)


def _write_keras2_h5(path, arrays, full_model=False):
    """The Keras 2 h5 layout (attrs layer_names / weight_names, ':0' names): a weights file, or
    a full-model file that keeps them in a "model_weights" group."""
    layers = {}
    for key, value in arrays.items():
        layer, weight = key.split("/")
        layers.setdefault(layer, []).append((f"{layer}/{weight}:0", value))
    with h5py.File(path, "w") as handle:
        root = handle.create_group("model_weights") if full_model else handle
        root.attrs["layer_names"] = [name.encode() for name in layers]
        for layer, weights in layers.items():
            group = root.create_group(layer)
            group.attrs["weight_names"] = [name.encode() for name, _ in weights]
            for name, value in weights:
                group.create_dataset(name, data=value)


def test_bn_inception_weight_files_round_trip(tmp_path, bn32):
    source, target = bn32
    arrays = random_bn_inception_arrays(np.random.default_rng(1), caffe_weight_shapes())
    np.savez(tmp_path / "w.npz", **arrays)
    bn_inception.load_weights(source, str(tmp_path / "w.npz"))
    _write_plain_h5(tmp_path / "plain.h5", arrays)
    _write_keras2_h5(tmp_path / "keras2.h5", arrays)
    _write_keras2_h5(tmp_path / "keras2_model.h5", arrays, full_model=True)
    source.save_weights(str(tmp_path / "keras3.weights.h5"))
    zeros = [np.zeros_like(w) for w in source.get_weights()]
    images = np.random.default_rng(2).normal(0, 50, size=(2, 32, 32, 3)).astype(np.float32)
    expected = source(images, training=False).numpy()
    assert np.abs(expected).max() > 0
    for name in ["w.npz", "plain.h5", "keras2.h5", "keras2_model.h5", "keras3.weights.h5"]:
        target.set_weights(zeros)
        bn_inception.load_weights(target, tmp_path / name)
        loaded = bn_inception.weight_arrays(target)
        assert all(np.array_equal(loaded[k], arrays[k]) for k in arrays), name
        np.testing.assert_array_equal(target(images, training=False).numpy(), expected)


def test_bn_inception_weight_file_errors(tmp_path, bn32, monkeypatch):
    _, model = bn32
    arrays = {k: np.zeros(s, np.float32) for k, s in caffe_weight_shapes().items()}
    arrays.pop("conv1_7x7_s2/bias")
    arrays["conv2_3x3/kernel"] = np.zeros((1, 1, 1, 1), np.float32)
    arrays["last_linear/kernel"] = np.zeros((1024, 1000), np.float32)
    np.savez(tmp_path / "broken.npz", **arrays)
    with pytest.raises(ValueError) as error:
        bn_inception.load_weights(model, str(tmp_path / "broken.npz"))
    message = str(error.value)
    assert "missing [conv1_7x7_s2/bias]" in message
    assert "unexpected [last_linear/kernel]" in message
    assert "conv2_3x3/kernel: file (1, 1, 1, 1) vs model (3, 3, 64, 192)" in message
    with pytest.raises(FileNotFoundError, match="does not exist"):
        bn_inception.load_weights(model, str(tmp_path / "absent.npz"))
    (tmp_path / "w.pkl").write_bytes(b"")
    with pytest.raises(ValueError, match="expected a .npz or .h5"):
        bn_inception.load_weights(model, str(tmp_path / "w.pkl"))
    # weights="imagenet" looks for the converted checkpoint and says how to make it.
    monkeypatch.setenv("CCP_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError) as error:
        ccp.models.build_embedding_model("bn_inception", weights="imagenet", image_size=32)
    assert str(tmp_path / "bn_inception_imagenet.npz") in str(error.value)
    assert "convert_bn_inception_pth.py" in str(error.value)


def _torch_state(rng):
    """A PyTorch BN-Inception state dict (numpy arrays) and the Keras arrays it converts to."""
    state = {"last_linear.weight": np.zeros((1000, 1024)), "last_linear.bias": np.zeros(1000)}
    torch_fields = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean",
                    "moving_variance": "running_var"}
    expected = {}
    for key, shape in caffe_weight_shapes().items():
        layer, field = key.split("/")
        array = rng.normal(size=shape).astype(np.float32)
        if field == "moving_variance":
            array = np.abs(array) + 0.5
        expected[key] = array
        if field == "kernel":
            state[f"{layer}.weight"] = np.transpose(array, (3, 2, 0, 1))  # HWIO -> OIHW
        elif field == "bias":
            state[f"{layer}.bias"] = array
        else:
            state[f"{layer}.{torch_fields[field]}"] = array
            state[f"{layer}.num_batches_tracked"] = np.array(0)
    return state, expected


def test_torch_state_dict_conversion_without_torch():
    state, expected = _torch_state(np.random.default_rng(3))
    converted = bn_inception.from_torch_state_dict(state)
    assert set(converted) == set(expected)
    for key in expected:
        np.testing.assert_array_equal(converted[key], expected[key])
    with pytest.raises(ValueError, match="conv1_7x7_s2_bn.momentum"):
        bn_inception.from_torch_state_dict({"conv1_7x7_s2_bn.momentum": np.zeros(1)})


# The two input means of SPEC §6, written out here: Caffe's, and 255 x the ImageNet RGB mean
# (0.485, 0.456, 0.406) in BGR order as the reference code subtracts it.
CAFFE_MEAN = (104.0, 117.0, 128.0)
REFERENCE_MEAN = (103.53, 116.28, 123.675)


def _check_model_uses(path, arrays, mean, epsilon):
    model = ccp.models.build_embedding_model("bn_inception", weights=str(path), image_size=32,
                                             embedding_size=4)
    norm = model.get_layer("input_normalization")
    np.testing.assert_allclose(norm.bgr_mean, mean, rtol=1e-6)
    backbone = model.get_layer("bn_inception")
    bns = ccp.models.batchnorm_layers(backbone)
    assert bns and all(layer.epsilon == pytest.approx(epsilon, rel=1e-9) for layer in bns)
    loaded = bn_inception.weight_arrays(backbone)
    assert all(np.array_equal(loaded[k], arrays[k]) for k in arrays)
    rgb = np.random.default_rng(5).uniform(0, 255, size=(2, 32, 32, 3)).astype(np.float32)
    bgr = rgb[..., ::-1] - np.asarray(mean, np.float32)
    np.testing.assert_allclose(norm(rgb).numpy(), bgr, atol=1e-4)
    clone = keras.layers.deserialize(keras.layers.serialize(norm))
    np.testing.assert_allclose(clone.bgr_mean, mean, rtol=1e-6)


def test_converter_from_a_pth_records_the_caffe_mean(tmp_path, monkeypatch):
    """A .pth stand-in: a module named torch whose load returns the state dict (this machine
    has no PyTorch); the converter must ask for weights_only=True."""
    state, expected = _torch_state(np.random.default_rng(6))
    calls = []

    class FakeTorch:
        @staticmethod
        def load(path, **kwargs):
            calls.append(kwargs)
            return {"state_dict": {f"module.{k}": v for k, v in state.items()}}

    monkeypatch.setitem(sys.modules, "torch", FakeTorch)
    (tmp_path / "bn.pth").write_bytes(b"")
    out = tmp_path / "caffe.npz"
    assert _load_converter().main([str(tmp_path / "bn.pth"), str(out)]) == 0
    assert calls == [{"map_location": "cpu", "weights_only": True}]
    meta = bn_inception.read_weight_metadata(out)
    assert meta == {"input_mean_bgr": CAFFE_MEAN, "bn_epsilon": pytest.approx(1e-5)}
    _check_model_uses(out, expected, CAFFE_MEAN, 1e-5)


def _write_reference_h5(path, arrays, epsilons):
    """The reference's BNInception.h5 layout: a Keras 2 full-model file (model_config JSON +
    model_weights), the checkpoint's layer names; BatchNorm epsilons as given per layer."""
    _write_keras2_h5(path, arrays, full_model=True)
    layers = [{"class_name": "InputLayer", "config": {"name": "input_1"}}]
    for (name, *_), epsilon in zip(caffe_convolutions(), epsilons):
        layers.append({"class_name": "Conv2D", "config": {"name": name, "use_bias": True}})
        layers.append({"class_name": "BatchNormalization",
                       "config": {"name": f"{name}_bn", "epsilon": epsilon}})
    config = {"class_name": "Functional", "config": {"name": "BN-Inception", "layers": layers}}
    with h5py.File(path, "a") as handle:
        handle.attrs["model_config"] = json.dumps(config).encode()
        handle.attrs["keras_version"] = b"2.4.0"


def test_converter_from_the_reference_h5_keeps_its_network_and_mean(tmp_path, capsys):
    arrays = random_bn_inception_arrays(np.random.default_rng(7), caffe_weight_shapes())
    source = tmp_path / "BNInception.h5"
    _write_reference_h5(source, arrays, [1.001e-5] * 69)
    out = tmp_path / "reference.npz"
    assert _load_converter().main([str(source), str(out)]) == 0, capsys.readouterr().err
    meta = bn_inception.read_weight_metadata(out)
    np.testing.assert_allclose(meta["input_mean_bgr"], REFERENCE_MEAN, rtol=1e-6)
    assert meta["bn_epsilon"] == pytest.approx(1.001e-5, rel=1e-9)
    _check_model_uses(out, arrays, REFERENCE_MEAN, 1.001e-5)
    # A file whose BatchNorm layers disagree, or that lacks a layer, is refused in one line.
    _write_reference_h5(tmp_path / "mixed.h5", arrays, [1e-5] * 68 + [1e-3])
    assert _load_converter().main([str(tmp_path / "mixed.h5"), str(tmp_path / "m.npz")]) == 1
    assert "different epsilons" in capsys.readouterr().err
    partial = {k: v for k, v in arrays.items() if not k.startswith("inception_5b_pool_proj")}
    _write_reference_h5(tmp_path / "partial.h5", partial, [1e-5] * 69)
    assert _load_converter().main([str(tmp_path / "partial.h5"), str(tmp_path / "p.npz")]) == 1
    assert "missing [inception_5b_pool_proj/bias" in capsys.readouterr().err
    assert not (tmp_path / "p.npz").exists()


def test_weight_files_without_metadata_keep_the_caffe_mean(tmp_path):
    arrays = random_bn_inception_arrays(np.random.default_rng(8), caffe_weight_shapes())
    np.savez(tmp_path / "old.npz", **arrays)
    assert bn_inception.read_weight_metadata(tmp_path / "old.npz") == {
        "input_mean_bgr": CAFFE_MEAN, "bn_epsilon": pytest.approx(1e-5)}
    _check_model_uses(tmp_path / "old.npz", arrays, CAFFE_MEAN, 1e-5)
    with pytest.raises(ValueError, match="takes no mean"):
        preprocessing.InputNormalization("unit", mean=(1, 2, 3))
    with pytest.raises(ValueError, match="3 values"):
        preprocessing.InputNormalization("bn_inception", mean=(1, 2))


def test_resnet50_weights(tmp_path, monkeypatch):
    model = ccp.models.build_embedding_model("resnet50", embedding_size=32, image_size=64)
    backbone = model.get_layer("resnet50")
    assert model.output_shape == (None, 32)
    assert backbone.output_shape == (None, 2, 2, 2048)
    # ResNet-50 without its classifier has 23,587,712 weights (Keras applications).
    assert backbone.count_params() == 23_587_712
    # No weights: not frozen.
    assert all(layer.trainable for layer in ccp.models.batchnorm_layers(model))
    # A local weight file: loaded, and BatchNorm frozen by default.
    for w in backbone.weights[:3]:
        w.assign(np.random.default_rng(4).normal(size=w.shape))
    path = tmp_path / "resnet50.weights.h5"
    backbone.save_weights(str(path))
    pretrained = ccp.models.build_embedding_model("resnet50", weights=path, image_size=64)
    for a, b in zip(pretrained.get_layer("resnet50").weights, backbone.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert not any(layer.trainable for layer in ccp.models.batchnorm_layers(pretrained))
    with pytest.raises(FileNotFoundError, match="resnet50_weights_tf_dim_ordering_tf_kernels"):
        ccp.models.build_embedding_model("resnet50", weights=tmp_path / "nope.h5")
    # "imagenet" without network: a clear error asking for a local file.
    from keras.src.applications import resnet as keras_resnet

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure: [Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(keras_resnet.file_utils, "get_file", offline)
    with pytest.raises(RuntimeError, match="pass its local path as weights=PATH"):
        ccp.models.build_embedding_model("resnet50", weights="imagenet", image_size=32)


def test_small_cnn_shape_and_weight_count():
    backbone = ccp.models.build_embedding_model("small_cnn").get_layer("small_cnn")
    assert backbone.output_shape == (None, 8, 8, 64)
    convs = [(3, 16), (16, 16), (16, 32), (32, 32), (32, 64)]  # 3x3, no bias, + BN (4 / channel)
    assert backbone.count_params() == sum(9 * i * o + 4 * o for i, o in convs)


def test_small_cnn_starts_from_a_backbone_or_a_whole_embedding_model_file(tmp_path):
    """weights=PATH: a small_cnn backbone file loads into the backbone (new random head), a
    whole embedding model's file loads everything; both freeze BatchNorm as pretrained."""
    keras.utils.set_random_seed(1)
    source = ccp.models.build_embedding_model("small_cnn", embedding_size=6)
    source.get_layer("small_cnn").save_weights(str(tmp_path / "backbone.weights.h5"))
    source.save_weights(str(tmp_path / "model.weights.h5"))
    assert ccp.models.embedding.is_embedding_weights_file(str(tmp_path / "model.weights.h5"))
    assert not ccp.models.embedding.is_embedding_weights_file(str(tmp_path / "backbone.weights.h5"))
    images = _images(3)
    expected = source(images, training=False).numpy()

    keras.utils.set_random_seed(2)
    whole = ccp.models.build_embedding_model("small_cnn", embedding_size=6,
                                             weights=str(tmp_path / "model.weights.h5"))
    np.testing.assert_array_equal(whole(images, training=False).numpy(), expected)

    keras.utils.set_random_seed(2)
    backbone_only = ccp.models.build_embedding_model(
        "small_cnn", embedding_size=6, weights=str(tmp_path / "backbone.weights.h5"))
    for mine, theirs in zip(backbone_only.get_layer("small_cnn").weights,
                            source.get_layer("small_cnn").weights):
        np.testing.assert_array_equal(mine.numpy(), theirs.numpy())
    assert not np.array_equal(backbone_only.get_layer("embedding").kernel.numpy(),
                              source.get_layer("embedding").kernel.numpy())
    for model in (whole, backbone_only):
        assert all(not layer.trainable for layer in ccp.models.batchnorm_layers(model))
    with pytest.raises(ValueError):  # a whole-model file of another head size
        ccp.models.build_embedding_model("small_cnn", embedding_size=7,
                                         weights=str(tmp_path / "model.weights.h5"))


def _images(seed, n=4, size=32):
    return np.random.default_rng(seed).uniform(0, 255, size=(n, size, size, 3)).astype(np.float32)


def test_embedding_model_layout_and_raw_outputs():
    model = ccp.models.build_embedding_model("small_cnn", embedding_size=12)
    assert model.input_shape == (None, 32, 32, 3) and ccp.models.model_image_size(model) == 32
    assert [layer.name for layer in model.layers] == ["images", "input_normalization", "small_cnn",
                                              "global_pooling", "embedding"]
    assert model.layers[-1].units == 12 and model.name == "small_cnn_embedding"
    out = model(_images(0), training=False)
    assert out.shape == (4, 12) and out.dtype == tf.float32
    assert not np.allclose(np.linalg.norm(out.numpy(), axis=1), 1.0)  # raw, not normalized
    assert ccp.models.model_image_size(
        ccp.models.build_embedding_model("bn_inception", embedding_size=4)) == 227


def test_avg_plus_max_pooling_sums_both():
    model = ccp.models.build_embedding_model("small_cnn", embedding_size=5, pooling="avg+max")
    images = _images(1)
    features = model.get_layer("small_cnn")(images / 255.0, training=False).numpy()
    pooled = features.mean(axis=(1, 2)) + features.max(axis=(1, 2))
    (kernel,) = model.get_layer("embedding").get_weights()  # no bias: the reference's head
    np.testing.assert_allclose(model(images, training=False).numpy(), pooled @ kernel,
                               rtol=1e-5, atol=1e-5)


def test_embedding_head_bias_is_opt_in_and_checked_on_load(tmp_path):
    plain = ccp.models.build_embedding_model("small_cnn", embedding_size=6)
    assert not plain.get_layer("embedding").use_bias
    assert len(plain.get_layer("embedding").weights) == 1
    biased = ccp.models.build_embedding_model("small_cnn", embedding_size=6, embedding_bias=True)
    head = biased.get_layer("embedding")
    head.bias.assign(np.linspace(-1.0, 1.0, 6).astype(np.float32))
    images = _images(5)
    features = biased.get_layer("small_cnn")(images / 255.0, training=False).numpy()
    np.testing.assert_allclose(biased(images, training=False).numpy(),
                               features.mean(axis=(1, 2)) @ head.kernel.numpy()
                               + np.linspace(-1.0, 1.0, 6), rtol=1e-5, atol=1e-5)
    biased_path = str(tmp_path / "biased.weights.h5")
    plain_path = str(tmp_path / "plain.weights.h5")
    biased.save_weights(biased_path)
    plain.save_weights(plain_path)
    # With a bias -> a model built with the flag: every output reproduced.
    again = ccp.models.build_embedding_model("small_cnn", embedding_size=6, embedding_bias=True)
    ccp.models.load_embedding_weights(again, biased_path)
    np.testing.assert_allclose(again(images, training=False).numpy(),
                               biased(images, training=False).numpy(), atol=1e-6)
    # With a bias -> a bias-free model: a one-line error naming the flag.
    with pytest.raises(ValueError, match="--embedding_bias") as info:
        ccp.models.load_embedding_weights(
            ccp.models.build_embedding_model("small_cnn", embedding_size=6), biased_path)
    assert "\n" not in str(info.value) and "biased.weights.h5" in str(info.value)
    with pytest.raises(ValueError, match="--noembedding_bias"):
        ccp.models.load_embedding_weights(
            ccp.models.build_embedding_model("small_cnn", embedding_size=6,
                                             embedding_bias=True), plain_path)
    fresh = ccp.models.build_embedding_model("small_cnn", embedding_size=6)
    ccp.models.load_embedding_weights(fresh, plain_path)
    np.testing.assert_allclose(fresh(images, training=False).numpy(),
                               plain(images, training=False).numpy(), atol=1e-6)


def test_input_normalization_conventions_and_config():
    pixel = np.array([[[[10.0, 20.0, 30.0]]]], np.float32)  # RGB
    bn = preprocessing.InputNormalization("bn_inception")(pixel).numpy()
    np.testing.assert_allclose(bn[0, 0, 0], [30 - 104, 20 - 117, 10 - 128])
    res = preprocessing.InputNormalization("resnet50")(pixel).numpy()
    expected = keras.applications.resnet50.preprocess_input(pixel.copy())
    np.testing.assert_allclose(res, expected, atol=1e-4)
    np.testing.assert_allclose(preprocessing.InputNormalization("unit")(pixel).numpy(), pixel / 255)
    clone = keras.layers.deserialize(keras.layers.serialize(
        preprocessing.InputNormalization("resnet50", name="norm")))
    assert isinstance(clone, preprocessing.InputNormalization)
    assert clone.convention == "resnet50" and clone.name == "norm"
    with pytest.raises(ValueError, match="convention must be one of"):
        preprocessing.InputNormalization("imagenet")


def test_whole_model_saves_and_loads_as_keras_file(tmp_path):
    model = ccp.models.build_embedding_model("small_cnn", embedding_size=8, pooling="avg+max")
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.get_layer("global_pooling").mode == "avg+max"
    assert loaded.get_layer("input_normalization").convention == "unit"
    np.testing.assert_allclose(loaded(_images(2), training=False).numpy(),
                               model(_images(2), training=False).numpy(), atol=1e-6)


def _train_step(model, images):
    optimizer = keras.optimizers.SGD(0.1)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.square(model(images, training=True)))
    variables = model.trainable_variables
    optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))


def _bn_state(model):
    return [w.numpy() for layer in ccp.models.batchnorm_layers(model) for w in layer.weights]


def test_frozen_batchnorm_runs_in_inference_mode_and_stays_fixed(tmp_path):
    source = ccp.models.build_embedding_model("small_cnn", embedding_size=8)
    path = str(tmp_path / "small_cnn.weights.h5")
    source.get_layer("small_cnn").save_weights(path)
    # Pretrained weights -> frozen by default.
    model = ccp.models.build_embedding_model("small_cnn", embedding_size=8, weights=path)
    bn_layers = ccp.models.batchnorm_layers(model)
    assert len(bn_layers) == 5 and not any(layer.trainable for layer in bn_layers)
    bn_ids = {id(v) for layer in bn_layers for v in layer.weights}
    assert not any(id(v) in bn_ids for v in model.trainable_variables)
    images = _images(3)
    np.testing.assert_allclose(model(images, training=True).numpy(),
                               model(images, training=False).numpy(), rtol=1e-6, atol=1e-6)
    before, conv_before = _bn_state(model), model.get_layer("small_cnn").weights[0].numpy()
    _train_step(model, images)
    assert all(np.array_equal(a, b) for a, b in zip(before, _bn_state(model)))
    assert not np.array_equal(conv_before, model.get_layer("small_cnn").weights[0].numpy())


def test_unfrozen_batchnorm_trains():
    model = ccp.models.build_embedding_model("small_cnn", embedding_size=8)  # no weights
    assert all(layer.trainable for layer in ccp.models.batchnorm_layers(model))
    images = _images(4)
    assert not np.allclose(model(images, training=True).numpy(),
                           model(images, training=False).numpy())
    before = _bn_state(model)
    _train_step(model, images)
    changed = [not np.array_equal(a, b) for a, b in zip(before, _bn_state(model))]
    assert all(changed)  # gamma, beta, moving mean and variance of every BN layer
    frozen = ccp.models.build_embedding_model("small_cnn", embedding_size=8,
                                              freeze_batchnorm=True)
    assert not any(layer.trainable for layer in ccp.models.batchnorm_layers(frozen))


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(backbone="vgg"), ValueError, "valid: bn_inception, efficientnet_b0, .*, small_cnn"),
    (dict(backbone="small_cnn", embedding_size=0), ValueError, "embedding_size"),
    (dict(backbone="small_cnn", embedding_size="128"), ValueError, "embedding_size"),
    (dict(backbone="small_cnn", pooling="sum"), ValueError, "pooling must be one of"),
    (dict(backbone="small_cnn", weights=3), TypeError, "weights must be"),
    (dict(backbone="small_cnn", weights="imagenet"), ValueError, "no ImageNet weights"),
    (dict(backbone="small_cnn", weights="/nonexistent/s.weights.h5"), FileNotFoundError,
     "does not exist"),
    (dict(backbone="small_cnn", freeze_batchnorm="yes"), TypeError, "freeze_batchnorm"),
    (dict(backbone="small_cnn", embedding_bias=1), TypeError, "embedding_bias"),
    (dict(backbone="small_cnn", image_size=30), ValueError, "divisible by 4"),
    (dict(backbone="small_cnn", image_size=-1), ValueError, "image_size"),
    (dict(backbone="resnet50", image_size=16), ValueError, ">= 32"),
])
def test_bad_arguments_fail_clearly(kwargs, error, match):
    with pytest.raises(error, match=match):
        ccp.models.build_embedding_model(**kwargs)
