"""SavedModel embedder: fresh-process reload, ensemble, preprocessing, CLI (SPEC §10)."""
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import ccp
from data_pipelines import augment

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SIZES = [(32, 32), (45, 60), (300, 41), (1, 1)]


@pytest.fixture(scope="module")
def models():
    return [ccp.models.build_embedding_model("small_cnn", embedding_size=6, name=f"m{i}")
            for i in range(2)]


@pytest.fixture(scope="module")
def exports(models, tmp_path_factory):
    root = tmp_path_factory.mktemp("exports")
    return {
        "single": ccp.export.export_embedder(models[0], str(root / "single")),
        "ensemble": ccp.export.export_embedder(models, root / "ensemble"),
    }


def _uint8(seed, n, height, width):
    return np.random.default_rng(seed).integers(0, 256, size=(n, height, width, 3)).astype(np.uint8)


def _raw(model, images):
    """The model's raw embedding of the data pipeline's eval crops (an independent
    implementation of the SPEC §6 eval preprocessing)."""
    crops = np.stack([augment.eval_transform(tf.constant(image), 32).numpy() for image in images])
    return model(crops, training=False).numpy()


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_eval_preprocessing_matches_the_data_pipeline():
    assert ccp.export.eval_resize_size(227) == 256 and ccp.export.eval_resize_size(32) == 36
    for height, width in SIZES + [(227, 227), (500, 333)]:
        for size in (32, 227):
            image = _uint8(height, 1, height, width)
            out = ccp.export.eval_preprocess(image, size).numpy()
            assert out.shape == (1, size, size, 3) and out.dtype == np.float32
            np.testing.assert_allclose(out[0], augment.eval_transform(image[0], size).numpy(),
                                       atol=1e-4)


def test_eval_preprocessing_keeps_the_center():
    # 20 x 40 image, bright in the middle half: resize to 36 x 72, crop x in [20, 52).
    image = np.zeros((1, 20, 40, 3), np.uint8)
    image[:, :, 10:30] = 200
    out = ccp.export.eval_preprocess(image, 32).numpy()
    assert out[0, :, 4:28].min() > 150 and out[0, :, 16].min() > 150


@pytest.mark.slow
def test_reload_in_a_fresh_process_without_ccp(tmp_path, models, exports):
    batches = [_uint8(i, 3, h, w) for i, (h, w) in enumerate(SIZES)]
    np.savez(tmp_path / "images.npz", *batches)
    # The child process cannot import ccp at all: the SavedModel must stand alone.
    script = (
        "import sys\n"
        "class NoCcp:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'ccp' or name.startswith('ccp.'):\n"
        "            raise ImportError('ccp must not be imported here')\n"
        "sys.meta_path.insert(0, NoCcp())\n"
        "import numpy as np, tensorflow as tf\n"
        "f = tf.saved_model.load(sys.argv[1]).signatures['serving_default']\n"
        "batches = np.load(sys.argv[2])\n"
        "out = {k: f(images=tf.constant(batches[k]))['embeddings'].numpy() for k in batches}\n"
        "assert not any(m == 'ccp' or m.startswith('ccp.') for m in sys.modules)\n"
        "np.savez(sys.argv[3], **out)\n"
    )
    subprocess.run([sys.executable, "-c", script, exports["single"], str(tmp_path / "images.npz"),
                    str(tmp_path / "out.npz")], check=True, cwd=str(tmp_path),
                   env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    reloaded = np.load(tmp_path / "out.npz")
    for index, batch in enumerate(batches):
        out = reloaded[f"arr_{index}"]
        assert out.shape == (3, 6) and out.dtype == np.float32
        np.testing.assert_allclose(out, _unit(_raw(models[0], batch)), atol=1e-5)


def test_ensemble_concatenates_unit_norm_blocks(models, exports):
    embed = ccp.export.load_embedder(exports["ensemble"])
    single = ccp.export.load_embedder(exports["single"])
    assert (embed.image_size, embed.embedding_size, embed.num_models) == (32, 12, 2)
    for index, (height, width) in enumerate(SIZES):
        images = _uint8(10 + index, 4, height, width)
        out = embed(images)
        assert out.shape == (4, 12)
        np.testing.assert_allclose(np.linalg.norm(out[:, :6], axis=1), 1.0, atol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(out[:, 6:], axis=1), 1.0, atol=1e-5)
        np.testing.assert_allclose(out[:, :6], single(images), atol=1e-6)
        np.testing.assert_allclose(out[:, 6:], _unit(_raw(models[1], images)), atol=1e-5)


def test_lipschitz_normalization_and_renormalized_concatenation(tmp_path, models):
    export_dir = ccp.export.export_embedder(models, tmp_path / "lip", normalization="lipschitz",
                                            normalize_concatenation=True)
    images = _uint8(5, 3, 40, 50)
    raw = [_raw(m, images) for m in models]
    # x / max(||x||, 1) per model, then the row scaled to unit norm (MLRC's tester).
    blocks = np.concatenate([x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1.0)
                             for x in raw], axis=1)
    out = ccp.export.load_embedder(export_dir)(images)
    np.testing.assert_allclose(out, _unit(blocks), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_export_and_load_errors(tmp_path, models, exports):
    with pytest.raises(ValueError, match="at least one model"):
        ccp.export.export_embedder([], tmp_path / "x")
    with pytest.raises(ValueError, match="normalization must be one of"):
        ccp.export.export_embedder(models[0], tmp_path / "x", normalization="cosine")
    larger = ccp.models.build_embedding_model("small_cnn", embedding_size=6, image_size=64)
    with pytest.raises(ValueError, match=r"same input size, got \[32, 64\]"):
        ccp.export.export_embedder([models[0], larger], tmp_path / "x")
    with pytest.raises(FileNotFoundError, match="no SavedModel"):
        ccp.export.load_embedder(tmp_path / "missing")
    embed = ccp.export.load_embedder(exports["single"])
    with pytest.raises(TypeError, match="uint8"):
        embed(np.zeros((1, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match=r"\[N, H, W, 3\]"):
        embed(np.zeros((8, 8, 3), np.uint8))


def _write_images(folder):
    rng = np.random.default_rng(2)
    (folder / "sub").mkdir(parents=True)
    files = {"b.png": (30, 40), "a.jpg": (50, 20), "sub/c.png": (32, 32), "D.PNG": (17, 90)}
    for name, (height, width) in files.items():
        Image.fromarray(rng.integers(0, 256, size=(height, width, 3)).astype(np.uint8)).save(
            folder / name)
    Image.fromarray(rng.integers(0, 256, size=(25, 25)).astype(np.uint8)).save(folder / "gray.png")
    (folder / "notes.txt").write_text("not an image")
    return ["D.PNG", "a.jpg", "b.png", "gray.png", "sub/c.png"]  # sorted by path


@pytest.mark.slow
def test_cli_embeds_a_folder(tmp_path, exports):
    folder = tmp_path / "images"
    expected_order = _write_images(folder)
    out = tmp_path / "result" / "emb"  # no .npy suffix: added; the folder is created
    result = subprocess.run(
        [sys.executable, "-m", "ccp.export", "embed", "--model", exports["ensemble"],
         "--images", str(folder), "--out", str(out), "--batch_size", "2"],
        cwd=REPO, capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr
    embeddings = np.load(tmp_path / "result" / "emb.npy")
    paths = (tmp_path / "result" / "emb.txt").read_text().splitlines()
    assert embeddings.shape == (5, 12) and embeddings.dtype == np.float32
    assert [os.path.relpath(p, folder) for p in paths] == expected_order
    # Every row equals the serving signature on that file's pixels (PNG is lossless; the JPEG
    # is decoded by the same TF decoder).
    embed = ccp.export.load_embedder(exports["ensemble"])
    for row, path in zip(embeddings, paths):
        pixels = ccp.export.read_image(path).numpy()[None]
        np.testing.assert_allclose(row, embed(pixels)[0], atol=1e-5)
    gray = np.asarray(Image.open(folder / "gray.png"))
    np.testing.assert_array_equal(ccp.export.read_image(str(folder / "gray.png")).numpy(),
                                  np.repeat(gray[..., None], 3, axis=2))


def test_cli_errors_name_the_problem(tmp_path, exports, capsys):
    def run(model, images):
        with pytest.raises(SystemExit) as exit_info:
            ccp.export.main(["embed", "--model", model, "--images", str(images),
                             "--out", str(tmp_path / "o.npy")])
        assert exit_info.value.code == 2
        return capsys.readouterr().err

    assert "does not exist" in run(exports["single"], tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    assert "no .jpg/.jpeg/.png images" in run(exports["single"], empty)
    bad = tmp_path / "bad"
    bad.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(bad / "fine.png")
    (bad / "broken.jpg").write_bytes(b"not a jpeg at all")
    assert "broken.jpg" in run(exports["single"], bad)
    assert "no SavedModel" in run(str(tmp_path / "nomodel"), bad)
    assert not (tmp_path / "o.npy").exists()


def _folder_with_damaged_jpegs(folder, damage):
    """Two good images and two damaged JPEGs (issue 10): header and mid-file damage."""
    rng = np.random.default_rng(7)
    folder.mkdir(parents=True)
    for name in ("good.png", "good.jpg", "header.jpg", "middle.jpg"):
        Image.fromarray(rng.integers(0, 256, size=(30, 40, 3)).astype(np.uint8)).save(
            folder / name)
    damage.header(str(folder / "header.jpg"))
    damage.middle(str(folder / "middle.jpg"))
    return [str(folder / n) for n in ("good.jpg", "good.png")], str(folder / "header.jpg"), \
        str(folder / "middle.jpg")


def test_cli_names_corrupt_images_or_skips_them(tmp_path, exports, capsys, damage):
    good, header, middle = _folder_with_damaged_jpegs(tmp_path / "images", damage)
    # TF decodes the mid-file damage without an error: only the strict check finds it.
    assert ccp.export.read_image(middle).shape == (30, 40, 3)
    out = tmp_path / "o.npy"
    argv = ["embed", "--model", exports["single"], "--images", str(tmp_path / "images"),
            "--out", str(out)]
    with pytest.raises(SystemExit) as exit_info:
        ccp.export.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: 2 of 4 images in ")
    assert f"{header}: cannot decode" in err
    assert f"{middle}: corrupt JPEG (Corrupt JPEG data: " in err
    assert "pass --skip_corrupt" in err and not out.exists()

    assert ccp.export.main(argv + ["--skip_corrupt"]) == 0
    captured = capsys.readouterr()
    assert f"skipped corrupt image {header}: cannot decode" in captured.err
    assert f"skipped corrupt image {middle}: corrupt JPEG" in captured.err
    assert "skipped 2 corrupt image(s)" in captured.out
    assert (tmp_path / "o.txt").read_text().splitlines() == good
    embed = ccp.export.load_embedder(exports["single"])
    expected = np.concatenate([embed(ccp.export.read_image(p).numpy()[None]) for p in good])
    np.testing.assert_allclose(np.load(out), expected, atol=1e-5)
    embeddings, paths = ccp.export.embed_folder(exports["single"], tmp_path / "images",
                                                skip_corrupt=True)
    assert paths == good
    np.testing.assert_allclose(embeddings, expected, atol=1e-5)


def test_export_check_agrees_with_the_data_pipeline_check(tmp_path, damage):
    """ccp cannot import data_pipelines: its own check must keep the same verdicts."""
    from data_pipelines import images

    assert ccp.export.BENIGN_JPEG_WARNINGS == images.BENIGN_JPEG_WARNINGS
    good, header, middle = _folder_with_damaged_jpegs(tmp_path / "images", damage)
    jfif2 = bytearray(open(good[0], "rb").read())
    jfif2[jfif2.index(b"JFIF\x00") + 5] = 2  # "unknown JFIF revision number 2.01": metadata
    (tmp_path / "images" / "jfif2.jpg").write_bytes(bytes(jfif2))
    (tmp_path / "images" / "page.jpg").write_bytes(b"<html>404</html>")
    data = open(good[0], "rb").read()
    (tmp_path / "images" / "cut.jpg").write_bytes(data[: len(data) // 2])
    Image.open(good[1]).convert("1").save(tmp_path / "images" / "bits.png", format="BMP")
    verdicts = {}
    for path in ccp.export.list_images(tmp_path / "images"):
        verdicts[os.path.basename(path)] = ccp.export.image_problem(path) is None
        assert verdicts[os.path.basename(path)] == (images.decode_problem(path) is None), path
    assert verdicts == {"good.jpg": True, "good.png": True, "jfif2.jpg": True,
                        "header.jpg": False, "middle.jpg": False, "page.jpg": False,
                        "cut.jpg": False, "bits.png": False}
