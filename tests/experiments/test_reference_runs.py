"""Issue 11, experiments side: the reference's runs (pool transform, lagged schedule, repeats and
ensembles, the conventional protocol)."""
import json
import logging
import os

import numpy as np
import pytest

from experiments import ensembles, protocol
from experiments import flags as flags_lib
from experiments.results import Embedded, FoldResult
from tests.data_pipelines.conftest import write_cub_layout

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = os.path.join(ROOT, "experiments", "configs")


def _map_at_r(query, query_labels, reference=None, reference_labels=None):
    """Independent float64 MAP@R (SPEC §8): Lipschitz-normalize (SPEC §2), rank by distance,
    self excluded."""
    def unit(x):
        return _lipschitz(np.asarray(x, np.float64))

    same = reference is None
    q = unit(query)
    r, r_labels = (q, query_labels) if same else (unit(reference), reference_labels)
    scores = []
    for i in range(len(q)):
        distances = np.sum((r - q[i]) ** 2, axis=1)
        order = [j for j in np.argsort(distances, kind="stable") if not (same and j == i)]
        relevant = np.array([r_labels[j] == query_labels[i] for j in order])
        count = int(relevant.sum())
        if count == 0:
            continue
        hits = relevant[:count]
        precision = np.cumsum(hits) / np.arange(1, count + 1)
        scores.append(float(np.sum(precision * hits)) / count)
    return float(np.mean(scores))


def _lipschitz(x):
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1.0)


def _concat_normalized(blocks):
    return np.concatenate([_lipschitz(np.asarray(b, np.float64)) for b in blocks], axis=1)


def test_every_one_model_per_fold_ensemble_against_numpy():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(5), 4)
    per_repeat = [[FoldResult(repeat=r, fold=k, train_classes=3, val_classes=2,
                              test_metrics={}, training={}, seconds=0.0,
                              query=Embedded(rng.normal(size=(20, 3)).astype(np.float32) * 2,
                                             labels))
                   for k in range(2)] for r in range(3)]

    def metrics_fn(query, reference):
        assert reference is None
        return {"map_at_r": _map_at_r(query.embeddings, query.labels)}

    evaluated = ensembles.evaluate_combinations(per_repeat, metrics_fn)
    assert [e["repeats"] for e in evaluated] == [[a, b] for a in range(3) for b in range(3)]
    expected = [_map_at_r(_concat_normalized([per_repeat[a][0].query.embeddings,
                                              per_repeat[b][1].query.embeddings]), labels)
                for a in range(3) for b in range(3)]
    np.testing.assert_allclose([e["metrics"]["map_at_r"] for e in evaluated], expected,
                               atol=1e-6)
    summary = ensembles.summarize_ensembles(evaluated, {"map_at_r": expected[0]})
    assert summary["count"] == 9
    assert summary["metrics"]["map_at_r"]["mean"] == pytest.approx(np.mean(expected), abs=1e-6)
    assert summary["metrics"]["map_at_r"]["std"] == pytest.approx(np.std(expected), abs=1e-6)
    assert summary["worst"]["metrics"]["map_at_r"] == pytest.approx(min(expected), abs=1e-6)
    assert summary["best"]["metrics"]["map_at_r"] == pytest.approx(max(expected), abs=1e-6)
    table = ensembles.ensembles_table(summary, 3, 2, 3)
    assert "9 combinations (3^2)" in table and "first repeat" in table


def _digits(tmp_path, *variants, frozen=(), **changes):
    """digits.cfg (+ variants) at a tiny budget; ``frozen``: flags the variants keep."""
    files = [os.path.join(CONFIGS, "digits.cfg")] + [os.path.join(CONFIGS, v) for v in variants]
    config = flags_lib.parse_flagfile(files[0], extra=[f"--flagfile={f}" for f in files[1:]])
    values = dict(output_dir=str(tmp_path / "run"), steps_per_epoch=2, max_epochs=2,
                  embedding_size=8, ccp_pool_size=2, ccp_proxies_per_class=2, folds=2,
                  classes_per_batch=2, samples_per_class=4, progress_bar=False,
                  compute_nmi=False, report=False, export=False)
    values.update(changes)
    values = {k: v for k, v in values.items() if k not in frozen}
    return config.replace(**values)


@pytest.mark.slow
def test_repeats_report_every_ensemble_from_the_stored_embeddings(tmp_path):
    config = _digits(tmp_path, repeats=2, ccp=False, max_epochs=1)
    results = protocol.run(config)
    stored = json.load(open(os.path.join(config.run.output_dir, "results.json")))
    summary = stored["ensembles"]
    assert summary["count"] == 4 and len(stored["per_fold"]) == 4
    assert summary["first_repeat"]["map_at_r"] == pytest.approx(
        stored["concatenated"]["map_at_r"]["values"][0], abs=1e-9)
    fold_maps = [f["metrics"]["map_at_r"] for f in stored["per_fold"]]
    assert stored["all_models_average"]["map_at_r"]["mean"] == pytest.approx(
        np.mean(fold_maps), abs=1e-9)
    # Independent: concatenate the stored normalized blocks of repeat_R/fold_K ourselves.
    blocks = {}
    for r in range(2):
        for k in range(2):
            path = os.path.join(config.run.output_dir, f"repeat_{r}", f"fold_{k}",
                                "test_embeddings.npz")
            with np.load(path) as arrays:
                blocks[r, k], labels = arrays["query"], arrays["query_labels"]
    for entry in summary["combinations"]:
        a, b = entry["repeats"]
        expected = _map_at_r(_concat_normalized([blocks[a, 0], blocks[b, 1]]), labels)
        assert entry["metrics"]["map_at_r"] == pytest.approx(expected, abs=1e-5)
    assert "4 combinations (2^2)" in results["table"]


@pytest.mark.slow
def test_conventional_variant_selects_on_test_stops_early_and_projects(tmp_path, caplog):
    # A learning rate too small to move Recall@1: no improvement after epoch 1, so with
    # patience 1 early stopping ends the run and the CCP instance ends (projection) at epoch 2.
    config = _digits(tmp_path, "variants/conventional.cfg", embedding_size=8, max_epochs=6,
                     patience=1, ccp_patience=1, classes_per_batch=3, samples_per_class=2,
                     learning_rate=1e-9, lr_plateau_patience=1, eval_batch_size=512,
                     frozen=("folds",))
    assert config.protocol.select_on_test and config.protocol.monitor == "precision_at_1"
    assert config.model.pooling == "avg+max" and config.protocol.folds == 1
    with caplog.at_level(logging.INFO, logger="absl"):
        results = protocol.run(config)
    assert "TEST split" in caplog.text and "monitored test Recall@1" in caplog.text
    assert "test split" in results["model_selection"] and "test split" in results["table"]
    fold = json.load(open(os.path.join(config.run.output_dir, "repeat_0", "fold_0",
                                       "fold_result.json")))
    training = fold["training"]
    assert training["stop_reason"] == "early_stopping" and training["epochs"] < 6
    assert len(training["projections"]) >= 1
    history = training["history"]
    assert all(h["monitor"] == "precision_at_1" for h in history)
    assert [h["monitored_value"] for h in history] == [h["val_precision_at_1"] for h in history]
    assert training["best_metric"] == pytest.approx(max(h["val_precision_at_1"]
                                                        for h in history))


@pytest.fixture
def cub_fixture(tmp_path):
    """CUB_200_2011 layout: train classes 1-6, test classes 101-103, 4 JPEGs each."""
    write_cub_layout(tmp_path / "CUB_200_2011", (1, 2, 3, 4, 5, 6, 101, 102, 103), 4)
    return tmp_path


@pytest.mark.slow
def test_cub_flagfile_draws_train_transform_pools_one_epoch_late(cub_fixture, tmp_path, caplog):
    config = flags_lib.parse_flagfile("cub.cfg", extra=[
        f"--data_dir={cub_fixture}", "--allow_partial", f"--output_dir={tmp_path / 'run'}",
        "--backbone=small_cnn", "--weights=none", "--image_size=32", "--embedding_size=8",
        "--folds=2", "--classes_per_batch=2", "--samples_per_class=2", "--steps_per_epoch=1",
        "--max_epochs=3", "--ccp_patience=1", "--noprogress_bar", "--nocompute_nmi",
        "--noreport", "--noexport", "--eval_batch_size=64"])
    assert config.ccp.monitor_lag == 1 and config.ccp.pool_transform == "train"
    with caplog.at_level(logging.INFO, logger="absl"):
        protocol.run(config)
    assert "proxy pool: 12 images/class, train transform, draw 0" in caplog.text
    assert "CCP schedule: one epoch late" in caplog.text


def test_proxy_pool_draws_are_deterministic_per_projection_and_augmented(tmp_path):
    from experiments import builders

    config = _digits(tmp_path, ccp_pool_size=3, ccp_proxies_per_class=2, min_crop_area=0.3)
    splits = builders.load_splits(config)
    model = builders.build_model(config, name="pool_model")
    pool = builders.proxy_pool_fn(config, splits.train, seed=4)
    first, again, second = pool(model, 1), pool(model, 1), pool(model, 2)
    assert first.shape == (splits.train.num_classes, 3, config.model.embedding_size)
    np.testing.assert_array_equal(first, again)  # a resumed run draws the same pool
    assert not np.allclose(first, second)  # a fresh draw at every projection
    evaluated = builders.proxy_pool_fn(config.replace(ccp_pool_transform="eval"), splits.train,
                                       seed=4)(model, 1)
    assert not np.allclose(first, evaluated)  # the training transform is applied


def test_monitored_trainer_evaluates_a_query_set_against_a_gallery():
    """In-shop's test split (queries vs gallery) as the monitored set, against numpy."""
    import keras
    import tensorflow as tf

    import ccp
    from experiments.monitored import MonitoredTrainer

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="embedding")])
    loss = ccp.losses.ContrastiveLoss()
    trainer = MonitoredTrainer(model, loss, ccp.training.build_optimization(model, loss),
                               monitor="precision_at_1", monitored_split="test",
                               progress_bar=False)
    rng = np.random.default_rng(1)
    query, gallery = rng.normal(size=(12, 4)), rng.normal(size=(15, 4))
    query_labels, gallery_labels = np.arange(12) % 4, np.arange(15) % 4

    def dataset(x, y):
        return tf.data.Dataset.from_tensor_slices((x.astype(np.float32), y)).batch(5)

    metrics = trainer.evaluate((dataset(query, query_labels), dataset(gallery, gallery_labels)))
    embed = lambda x: model(x.astype(np.float32)).numpy()  # noqa: E731
    assert metrics["map_at_r"] == pytest.approx(
        _map_at_r(embed(query), query_labels, embed(gallery), gallery_labels), abs=1e-6)
    assert metrics["embedding_spread"] > 0
