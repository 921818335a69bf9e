"""experiments/run.py: flagfiles, flag errors, the digits protocol end to end, resume."""
import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from experiments import builders, protocol, registry
from experiments import config as config_lib
from experiments import flags as flags_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = os.path.join(ROOT, "experiments", "configs")
DATASET_CONFIGS = sorted(glob.glob(os.path.join(CONFIGS, "*.cfg")))
VARIANTS = sorted(glob.glob(os.path.join(CONFIGS, "variants", "*.cfg")))


def _parse(*flagfiles, extra=()):
    from absl import flags

    values = flags.FlagValues()
    flags_lib.define_flags(values)
    values(["run.py", *[f"--flagfile={f}" for f in flagfiles], *extra])
    return flags_lib.config_from_flags(values)


@pytest.mark.parametrize("dataset_cfg", DATASET_CONFIGS, ids=os.path.basename)
@pytest.mark.parametrize("variant", [None] + VARIANTS,
                         ids=lambda v: "default" if v is None else os.path.basename(v))
def test_every_flagfile_parses_and_builds_its_loss(dataset_cfg, variant, tmp_path):
    files = [dataset_cfg] + ([variant] if variant else [])
    config = _parse(*files, extra=[f"--data_dir={tmp_path}"])
    loss = builders.build_loss(config, num_classes=6)
    assert loss.loss_terms is not None
    if config.ccp.enabled:
        assert loss.proxies.shape == (6 * config.ccp.proxies_per_class,
                                      config.model.embedding_size)
    if variant is None and config.data.dataset not in registry.EMBEDDED_DATASETS:
        assert config.loss.name == "contrastive" and config.ccp.enabled
        assert config.protocol.folds == 4
        assert config.model.backbone == "bn_inception" and config.optimizer.learning_rate == 1e-5


def test_paper_hyperparameters_per_dataset(tmp_path):
    cub = _parse(os.path.join(CONFIGS, "cub.cfg"), extra=[f"--data_dir={tmp_path}"])
    sop = _parse(os.path.join(CONFIGS, "sop.cfg"), extra=[f"--data_dir={tmp_path}"])
    assert (cub.loss.pos_margin, cub.loss.neg_margin) == (0.0, 0.3841)
    assert (cub.ccp.proxies_per_class, cub.ccp.pool_size, cub.protocol.steps_per_epoch) == (
        8, 12, 25)
    assert (sop.ccp.proxies_per_class, sop.ccp.pool_size, sop.protocol.steps_per_epoch) == (
        4, 7, 250)
    assert (sop.loss.soft_triple_lambda, sop.loss.soft_triple_gamma) == (100.0, 47.9)


def test_inconsistent_flags_fail_with_the_flag_names(tmp_path):
    with pytest.raises(config_lib.ConfigError, match="--data_dir"):
        _parse(os.path.join(CONFIGS, "cub.cfg"))
    with pytest.raises(config_lib.ConfigError, match="--ccp wraps a pair loss"):
        _parse(extra=["--loss=proxy_anchor", "--ccp"])
    with pytest.raises(config_lib.ConfigError, match="--samples_per_class must be >= 2"):
        _parse(extra=["--samples_per_class=1"])
    with pytest.raises(config_lib.ConfigError, match="is not an existing folder"):
        _parse(extra=["--dataset=sop", f"--data_dir={tmp_path / 'nope'}"])


def _run_cli(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "run.py"), *args],
                          capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})


def test_cli_rejects_unknown_flags_and_bad_data_dirs(tmp_path):
    unknown = _run_cli("--no_such_flag=3")
    assert unknown.returncode != 0 and "no_such_flag" in unknown.stderr
    bad_dir = _run_cli("--dataset=cub", f"--data_dir={tmp_path / 'missing'}")
    assert bad_dir.returncode != 0 and "--data_dir" in bad_dir.stderr
    # An existing folder without the CUB files names the missing annotation file.
    wrong = _run_cli("--dataset=cub", f"--data_dir={tmp_path}", f"--output_dir={tmp_path / 'out'}")
    assert wrong.returncode != 0 and "images.txt" in wrong.stderr


def tiny_config(tmp_path, **changes):
    base = flags_lib.parse_flagfile(os.path.join(CONFIGS, "digits.cfg"))
    # 4 folds (the MLRC flow); the smallest training fold has 3 of the 5 digit classes.
    values = dict(output_dir=str(tmp_path / "run"), steps_per_epoch=3, max_epochs=2,
                  embedding_size=16, ccp_pool_size=3, ccp_proxies_per_class=2, tsne_points=150,
                  folds=4, classes_per_batch=3, samples_per_class=4, progress_bar=False,
                  compute_nmi=True)
    values.update(changes)
    return base.replace(**values)


def _check_results(config, results):
    stored = json.load(open(os.path.join(config.run.output_dir, "results.json")))
    assert stored["method"] == "C2-CCP" and stored["folds"] == config.protocol.folds
    assert len(stored["per_fold"]) == config.protocol.folds
    for name in ("precision_at_1", "r_precision", "map_at_r", "recall_at_8", "nmi"):
        assert 0.0 <= stored["average"][name]["mean"] <= 1.0
    assert "MAP@R" in results["table"]


def test_conventional_single_fold_end_to_end(tmp_path):
    config = tiny_config(tmp_path, folds=1, report=False)
    results = protocol.run(config)
    _check_results(config, results)
    assert "concatenated" not in results
    assert os.path.isdir(os.path.join(config.run.output_dir, "export", "fold_0"))


def test_mlrc_four_folds_end_to_end_and_resume(tmp_path):
    config = tiny_config(tmp_path)
    results = protocol.run(config)
    _check_results(config, results)
    concat = results["concatenated"]["map_at_r"]["mean"]
    assert 0.0 <= concat <= 1.0
    # The exported 4 x 16 = 64D ensemble loads with plain TensorFlow and embeds uint8 images.
    import tensorflow as tf

    serving = tf.saved_model.load(os.path.join(config.run.output_dir, "export", "ensemble"))
    images = np.random.default_rng(0).integers(0, 256, size=(2, 40, 40, 3)).astype(np.uint8)
    out = serving.signatures["serving_default"](images=tf.constant(images))["embeddings"].numpy()
    assert out.shape == (2, 64)
    # Report: valid PNG files embedded in report.md.
    report = open(os.path.join(config.run.output_dir, "report.md")).read()
    for name in ("training_curves.png", "covering_radius.png", "tsne.png"):
        path = os.path.join(config.run.output_dir, name)
        with open(path, "rb") as handle:
            assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
        assert name in report
    # Interrupt: fold 3 lost its result (killed before it finished); fold 0-2 are kept as they are.
    fold = lambda k: os.path.join(config.run.output_dir, "repeat_0", f"fold_{k}")  # noqa: E731
    kept = {k: os.path.getmtime(os.path.join(fold(k), "model.weights.h5")) for k in range(3)}
    os.remove(os.path.join(fold(3), "fold_result.json"))
    again = protocol.run(config)
    for k in range(3):
        assert os.path.getmtime(os.path.join(fold(k), "model.weights.h5")) == kept[k]
    assert os.path.exists(os.path.join(fold(3), "fold_result.json"))
    assert again["average"]["map_at_r"]["mean"] == pytest.approx(
        results["average"]["map_at_r"]["mean"], abs=1e-6)
    # A different configuration in the same folder is refused.
    with pytest.raises(config_lib.ConfigError, match="different settings"):
        protocol.run(config.replace(learning_rate=0.5))
