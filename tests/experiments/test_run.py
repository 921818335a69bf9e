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


def _check_built_loss(config, num_classes=6, call=False):
    """The loss the flags describe: the base loss's class inside the wrappers the flags ask for
    (MDR > XBM > CCP > Proxy Synthesis, outermost first, as builders.build_loss nests them), a
    CCP bank of the flagged shape; with ``call``, a loss that responds to its input (finite,
    with a non-zero finite gradient on a random batch). (Calling every flagfile's loss would
    XLA-compile the fused C2-CCP loss once per margin set: tests/ccp covers that path.)"""
    import ccp
    import tensorflow as tf

    loss = builders.build_loss(config, num_classes=num_classes)
    layer = loss
    if config.loss.mdr:
        assert isinstance(layer, ccp.losses.MultiLevelDistanceRegularization)
        layer = layer.base_loss
    if config.xbm.enabled:
        assert isinstance(layer, ccp.losses.CrossBatchMemory)
        layer = layer.loss
    if config.ccp.enabled:
        assert isinstance(layer, ccp.losses.CCPLoss)
        assert layer.proxies.shape == (num_classes * config.ccp.proxies_per_class,
                                       config.model.embedding_size)
        layer = layer.base_loss
    if config.loss.proxy_synthesis:
        assert isinstance(layer, ccp.losses.ProxySynthesisLoss)
        layer = layer.base_loss
    spec = registry.LOSSES[config.loss.name]
    assert type(layer) is type(spec.build(config.loss, num_classes,
                                          config.model.embedding_size, 0))
    if not call:
        return loss
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(num_classes), 2)
    x = tf.constant(rng.normal(size=(len(labels), config.model.embedding_size)), tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(x)
        value = loss(labels, x)
    gradient = tape.gradient(value, x).numpy()
    assert np.isfinite(float(value)) and np.all(np.isfinite(gradient))
    assert np.any(gradient != 0.0)
    return loss


@pytest.mark.parametrize("dataset_cfg", DATASET_CONFIGS, ids=os.path.basename)
def test_every_dataset_flagfile_parses_and_builds_its_loss(dataset_cfg, tmp_path):
    config = _parse(dataset_cfg, extra=[f"--data_dir={tmp_path}"])
    _check_built_loss(config)
    if config.data.dataset not in registry.EMBEDDED_DATASETS:
        assert config.loss.name == "contrastive" and config.ccp.enabled
        assert config.protocol.folds == 4
        assert config.model.backbone == "bn_inception" and config.optimizer.learning_rate == 1e-5


@pytest.mark.parametrize("variant", VARIANTS, ids=os.path.basename)
def test_every_variant_flagfile_parses_and_builds_its_loss(variant, tmp_path):
    # The variants override the loss, wrappers and protocol, never the data set: one data set
    # flagfile under each covers the same code as all of them.
    config = _parse(os.path.join(CONFIGS, "cub.cfg"), variant, extra=[f"--data_dir={tmp_path}"])
    _check_built_loss(config)


def test_reference_head_flags_build_their_switches(tmp_path):
    """SPEC §4c's switches from the command line to the loss objects."""
    import ccp

    assert set(registry.NORMALIZATIONS) == set(ccp.layers.NORMALIZATIONS)
    config = _parse(extra=["--ccp", "--distance=cosine", "--normalization=l2",
                           "--miner=distance_weighted_reference"])
    loss = _check_built_loss(config, call=True)
    assert loss.normalization == "l2" and loss.base_loss.normalization == "l2"
    assert isinstance(loss.base_loss.distance, ccp.losses.distances.CosineDistance)
    assert isinstance(loss.base_loss.miner, ccp.losses.miners.ReferenceDistanceWeighted)
    nca = _check_built_loss(_parse(extra=["--loss=proxy_nca", "--proxy_nca_proxies_per_class=3",
                                          "--proxy_synthesis", "--samples_per_class=1"]),
                            call=True)
    assert nca.base_loss.proxies_per_class == 3 and nca.proxies.shape[0] == 6 * 3
    with pytest.raises(config_lib.ConfigError, match="--proxy_nca_proxies_per_class must be"):
        _parse(extra=["--loss=proxy_nca", "--proxy_nca_proxies_per_class=0"])
    with pytest.raises(config_lib.ConfigError, match="--normalization='unit' is not one of"):
        config_lib.validate(config_lib.ExperimentConfig().replace(normalization="unit"))
    # A switch the chosen loss would ignore is refused, naming the losses that take it.
    with pytest.raises(config_lib.ConfigError, match="--distance=cosine works with "
                                                     "--loss=contrastive, triplet, margin"):
        _parse(extra=["--loss=multi_similarity", "--distance=cosine"])
    with pytest.raises(config_lib.ConfigError, match="--proxy_nca_proxies_per_class needs "
                                                     "--loss=proxy_nca, not contrastive"):
        _parse(extra=["--proxy_nca_proxies_per_class=2"])


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


@pytest.mark.slow
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


def _lipschitz(x):
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1.0)


def _numpy_map_at_r_and_p1(embeddings, labels):
    """SPEC §8 in float64 with explicit loops: self-retrieval, the query removed by its index,
    neighbours by increasing L2 distance of the Lipschitz-normalized embeddings, ties to the
    lower index; means over the queries with R >= 1."""
    x, labels = _lipschitz(embeddings), np.asarray(labels)
    aps, hits = [], []
    for i in range(len(x)):
        others = np.array([j for j in range(len(x)) if j != i])
        d = np.sqrt(((x[others] - x[i]) ** 2).sum(axis=1))
        order = others[np.lexsort((others, d))]
        relevant = labels[order] == labels[i]
        r = int(relevant.sum())
        if r == 0:
            continue
        precision = np.cumsum(relevant[:r]) / np.arange(1, r + 1)
        aps.append(float(np.sum(precision * relevant[:r]) / r))
        hits.append(float(relevant[0]))
    return np.mean(aps), np.mean(hits)


def _check_results(config, results):
    """What a broken run would get wrong: each fold's stored test metrics equal an independent
    recomputation from its stored test embeddings, the averages are the folds' means, every
    epoch's loss is finite, and a CCP bank holds finite, distinct proxies of the fold's classes."""
    out = config.run.output_dir
    stored = json.load(open(os.path.join(out, "results.json")))
    assert stored["method"] == "C2-CCP" and stored["folds"] == config.protocol.folds
    assert len(stored["per_fold"]) == config.protocol.folds
    per_fold = {name: [] for name in ("map_at_r", "precision_at_1")}
    for k in range(config.protocol.folds):
        fold_dir = os.path.join(out, "repeat_0", f"fold_{k}")
        record = json.load(open(os.path.join(fold_dir, "fold_result.json")))
        arrays = np.load(os.path.join(fold_dir, "test_embeddings.npz"))
        assert arrays["query"].shape == (len(arrays["query_labels"]),
                                         config.model.embedding_size)
        map_at_r, p_at_1 = _numpy_map_at_r_and_p1(arrays["query"], arrays["query_labels"])
        # float32 (ccp) vs float64 (here) distances can swap two neighbours at a near-tie; one
        # swap moves one query's AP by < 1, i.e. the mean over ~900 digit queries by < 1.2e-3.
        assert record["test_metrics"]["map_at_r"] == pytest.approx(map_at_r, abs=2e-3)
        assert record["test_metrics"]["precision_at_1"] == pytest.approx(p_at_1, abs=2e-3)
        for name in per_fold:
            per_fold[name].append(record["test_metrics"][name])
        history = record["training"]["history"]
        assert history and all(np.isfinite(epoch["loss"]) for epoch in history)
        proxies = arrays["proxies"]
        assert proxies.shape == (record["train_classes"] * config.ccp.proxies_per_class,
                                 config.model.embedding_size)
        assert np.all(np.isfinite(proxies))
        assert len(np.unique(proxies, axis=0)) == len(proxies)  # k-center picks distinct points
    for name, values in per_fold.items():
        assert stored["average"][name]["mean"] == pytest.approx(np.mean(values), abs=1e-12)
    assert "MAP@R" in results["table"]


@pytest.mark.slow
def test_conventional_single_fold_end_to_end(tmp_path):
    config = tiny_config(tmp_path, folds=1, report=False)
    results = protocol.run(config)
    _check_results(config, results)
    assert "concatenated" not in results
    assert os.path.isdir(os.path.join(config.run.output_dir, "export", "fold_0"))


@pytest.mark.slow
def test_mlrc_four_folds_end_to_end_and_resume(tmp_path):
    config = tiny_config(tmp_path)
    results = protocol.run(config)
    _check_results(config, results)
    assert len(results["concatenated"]["map_at_r"]["values"]) == 1
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
