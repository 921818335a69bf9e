"""SavedModel embedder: fresh-process reload, ensemble, preprocessing, CLI (SPEC §10)."""
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import ccp


@pytest.fixture(scope="module")
def models():
    return [ccp.models.build_embedding_model("small_cnn", embedding_size=6, name=f"m{i}")
            for i in range(2)]


def _expected(model, images):
    out = model(ccp.export.eval_preprocess(images, 32), training=False).numpy()
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def test_reload_in_a_fresh_process_without_ccp(tmp_path, models):
    export_dir = str(tmp_path / "single")
    ccp.export.export_embedder(models[0], export_dir)
    images = np.random.default_rng(0).integers(0, 256, size=(3, 45, 60, 3)).astype(np.uint8)
    np.save(tmp_path / "images.npy", images)
    script = (
        "import sys, numpy as np, tensorflow as tf\n"
        "f = tf.saved_model.load(sys.argv[1]).signatures['serving_default']\n"
        "out = f(images=tf.constant(np.load(sys.argv[2])))['embeddings'].numpy()\n"
        "assert 'ccp' not in sys.modules\n"
        "np.save(sys.argv[3], out)\n"
    )
    subprocess.run([sys.executable, "-c", script, export_dir, str(tmp_path / "images.npy"),
                    str(tmp_path / "out.npy")], check=True, cwd=str(tmp_path),
                   env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    reloaded = np.load(tmp_path / "out.npy")
    np.testing.assert_allclose(reloaded, _expected(models[0], images), atol=1e-5)


def test_eval_preprocessing_resizes_the_shorter_side_and_center_crops():
    # A 20 x 40 image whose left and right quarters differ: after resizing the shorter side to
    # 36 (72 wide) and cropping 32 x 32 in the center, only the middle half remains.
    image = np.zeros((1, 20, 40, 3), np.uint8)
    image[:, :, 10:30] = 200
    out = ccp.export.eval_preprocess(image, 32).numpy()
    assert out.shape == (1, 32, 32, 3)
    assert ccp.export.eval_resize_size(227) == 256 and ccp.export.eval_resize_size(32) == 36
    assert out[0, :, 4:28].min() > 150 and out[0, 16, 0].min() > 150  # crop x in [20, 52) of 72


def test_ensemble_concatenates_unit_norm_blocks(tmp_path, models):
    export_dir = str(tmp_path / "ensemble")
    ccp.export.export_embedder(models, export_dir)
    embed = ccp.export.load_embedder(export_dir)
    for size in [(32, 32), (50, 41)]:
        images = np.random.default_rng(1).integers(0, 256, size=(4, *size, 3)).astype(np.uint8)
        out = embed(images)
        assert out.shape == (4, 12)
        np.testing.assert_allclose(np.linalg.norm(out[:, :6], axis=1), 1.0, atol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(out[:, 6:], axis=1), 1.0, atol=1e-5)
        np.testing.assert_allclose(out[:, 6:], _expected(models[1], images), atol=1e-5)


def test_cli_embeds_a_folder(tmp_path, models):
    export_dir = str(tmp_path / "cli_model")
    ccp.export.export_embedder(models[0], export_dir)
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(2)
    for name in ["b.png", "a.jpg", "sub/c.png"]:
        Image.fromarray(rng.integers(0, 256, size=(30, 40, 3)).astype(np.uint8)).save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "emb.npy"
    assert ccp.export.main(["embed", "--model", export_dir, "--images", str(folder),
                            "--out", str(out)]) == 0
    embeddings = np.load(out)
    paths = (tmp_path / "emb.txt").read_text().split()
    assert embeddings.shape == (3, 6)
    assert [os.path.relpath(p, folder) for p in paths] == ["a.jpg", "b.png", "sub/c.png"]
    # PNG is lossless, so the file's pixels are exactly what the CLI decoded.
    second = np.asarray(Image.open(folder / "b.png").convert("RGB"))[None]
    np.testing.assert_allclose(embeddings[1], _expected(models[0], second)[0], atol=1e-5)


def test_cli_errors_name_the_problem(tmp_path, models, capsys):
    export_dir = str(tmp_path / "m")
    ccp.export.export_embedder(models[0], export_dir)
    with pytest.raises(SystemExit):
        ccp.export.main(["embed", "--model", export_dir, "--images", str(tmp_path / "missing"),
                         "--out", str(tmp_path / "o.npy")])
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(SystemExit):
        ccp.export.main(["embed", "--model", export_dir, "--images", str(bad),
                         "--out", str(tmp_path / "o.npy")])
    assert "broken.jpg" in capsys.readouterr().err
