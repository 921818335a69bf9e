"""experiments/report.py and experiments/covering.py: the training classes' covering radius by
their proxies, the t-SNE panels with a class legend, the skipped queries, and a tiny digits CCP
run's report."""
import json
import os

import numpy as np
import pytest

import ccp
from experiments import covering
from experiments import flags as flags_lib
from experiments import protocol
from experiments import report
from experiments import results as results_lib
from experiments.results import Embedded


def _brute_force_radii(x, y, proxies):
    radii = []
    for c in range(proxies.shape[0]):
        worst = None
        for i in range(len(x)):
            if y[i] != c:
                continue
            nearest = min(float(np.sqrt(sum((float(x[i, d]) - float(proxies[c, k, d])) ** 2
                                            for d in range(x.shape[1]))))
                          for k in range(proxies.shape[1]))
            worst = nearest if worst is None else max(worst, nearest)
        radii.append(np.nan if worst is None else worst)
    return np.array(radii)


@pytest.mark.parametrize("chunk_rows", [1024, 7])
def test_class_covering_radii_match_a_float64_loop(monkeypatch, chunk_rows):
    monkeypatch.setattr(covering, "_CHUNK_ROWS", chunk_rows)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(40, 5)).astype(np.float32)
    y = rng.choice([0, 1, 3], size=40)  # class 2 has no embedding
    proxies = rng.normal(size=(4, 3, 5)).astype(np.float32)
    got = covering.class_covering_radii(x, y, proxies)
    want = _brute_force_radii(x, y, proxies)
    np.testing.assert_allclose(got, want, rtol=1e-12, equal_nan=True)
    assert np.isnan(got[2])
    summary = covering.summarize_radii(got)
    assert summary == {"mean": pytest.approx(np.nanmean(want)), "max": pytest.approx(
        np.nanmax(want)), "classes": 3}
    # A proxy on every point: radius 0.
    exact = covering.class_covering_radii(x[:3], np.zeros(3, int), x[None, :3])
    np.testing.assert_array_equal(exact, [0.0])
    with pytest.raises(ValueError, match=r"class indices must lie in \[0, 4\)"):
        covering.class_covering_radii(x, np.full(40, 4), proxies)
    with pytest.raises(ValueError, match="proxies"):
        covering.class_covering_radii(x, y, proxies[:, :, :4])


def test_training_sample_is_fixed_by_the_seed():
    import data_pipelines

    records = data_pipelines.Records(np.repeat(np.arange(5), 10),
                                     images=np.zeros((50, 2, 2, 3), np.uint8))
    first = covering.training_sample(records, 12, seed=4)
    assert len(first) == 12 and np.array_equal(
        first.labels, covering.training_sample(records, 12, seed=4).labels)
    assert len(covering.training_sample(records, 500, seed=4)) == 50


def _skipped_by_loop(query, reference):
    skipped = {}
    for i, label in enumerate(query):
        if reference is None:
            relevant = sum(1 for j, other in enumerate(query) if j != i and other == label)
        else:
            relevant = sum(1 for other in reference if other == label)
        if relevant == 0:
            skipped[int(label)] = skipped.get(int(label), 0) + 1
    return skipped


def test_skipped_queries_match_a_loop_and_the_metrics():
    rng = np.random.default_rng(0)
    query = np.array([3, 3, 7, 9, 9, 9, 12, 40])  # 7, 12 and 40 are single images
    embeddings = rng.normal(size=(len(query), 4))
    assert report.skipped_queries(query) == _skipped_by_loop(query, None) == {7: 1, 12: 1, 40: 1}
    metrics = ccp.metrics.retrieval_metrics(embeddings, query)
    assert metrics["num_skipped_queries"] == 3
    gallery = np.array([3, 9, 9, 12, 5])
    assert report.skipped_queries(query, gallery) == _skipped_by_loop(query, gallery) == {
        7: 1, 40: 1}
    metrics = ccp.metrics.retrieval_metrics(embeddings, query, rng.normal(size=(5, 4)), gallery)
    assert metrics["num_skipped_queries"] == 2
    fold = results_lib.FoldResult(0, 0, 2, 2, {"num_skipped_queries": 3.0}, {}, 0.0,
                                  Embedded(embeddings, query))
    text = "\n".join(report.skipped_queries_section(fold))
    assert "3 of 8 test queries" in text and "class 7 (1 query)" in text
    assert "class 40 (1 query)" in text and "Warning" not in text
    full = results_lib.FoldResult(0, 0, 2, 2, {"num_skipped_queries": 0.0}, {}, 0.0,
                                  Embedded(embeddings[:2], query[:2]))
    assert "No query was skipped" in "\n".join(report.skipped_queries_section(full))


def _blobs(num_classes, per_class, dim=6, seed=0, offset=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=4.0, size=(num_classes, dim))
    labels = np.repeat(np.arange(num_classes), per_class) + offset
    return Embedded((centers[labels - offset] + rng.normal(size=(len(labels), dim)))
                    .astype(np.float32), labels)


def _legend_texts(ax):
    legend = ax.get_legend()
    return [] if legend is None else [t.get_text() for t in legend.get_texts()]


def test_tsne_panels_and_class_legends():
    test = _blobs(4, 8, offset=100)
    train = _blobs(3, 8, seed=1)
    proxies = Embedded(np.concatenate([train.embeddings[:2], train.embeddings[8:10],
                                       train.embeddings[16:18]]), np.repeat(np.arange(3), 2))
    fig = report.tsne_figure(test, train, proxies, max_points=100, seed=0)
    test_ax, proxy_ax = fig.axes[:2]
    assert _legend_texts(test_ax) == [f"test class {c}" for c in (100, 101, 102, 103)]
    assert len(test_ax.collections) == 1  # the test points only: no proxy there
    assert len(test_ax.collections[0].get_offsets()) == 32
    assert _legend_texts(proxy_ax) == ["training class 0", "training class 1",
                                       "training class 2", "proxy (its class's colour)"]
    points, stars = proxy_ax.collections
    assert len(points.get_offsets()) == 24 and len(stars.get_offsets()) == 6
    # Each proxy has its class's colour, the colour of that class's training points.
    point_colors = {tuple(np.round(c[:3], 6)) for c in points.get_facecolors()[:8]}
    assert {tuple(np.round(c[:3], 6)) for c in stars.get_facecolors()[:2]} == point_colors
    assert len(point_colors) == 1
    # Without proxies: one panel. Many classes: no per-class legend, a note instead.
    many = report.tsne_figure(_blobs(25, 3), max_points=100)
    assert len(many.axes) == 1 and not _legend_texts(many.axes[0])
    assert any("25 classes: no legend" in t.get_text() for t in many.axes[0].texts)


def _radius_log(name, epochs, projections):
    series = [{"epoch": e, "point": "epoch", "projection": e in projections, "mean": 1.0 / e,
               "max": 2.0 / e, "classes": 3, "images": 30} for e in range(1, epochs + 1)]
    series.append(dict(series[0], point="final", projection=False))
    return {"name": name, "epochs": [{"epoch": e, "loss": 1.0} for e in range(1, epochs + 1)],
            "projections": [{"epoch": e} for e in projections], "covering_radius": series}


def _vertical_lines(ax):
    return sorted(line.get_xdata()[0] for line in ax.lines
                  if len(line.get_xdata()) == 2 and line.get_xdata()[0] == line.get_xdata()[1]
                  and line.get_linestyle() == ":")


def test_covering_radius_figure_marks_projections_and_names_folds_without():
    fig = report.covering_radius_figure([_radius_log("fold 0", 5, [2, 4]),
                                         _radius_log("fold 1", 3, [])])
    ax = fig.axes[0]
    assert _vertical_lines(ax) == [2, 4]
    mean_line = next(line for line in ax.lines if line.get_label() == "fold 0 mean over classes")
    np.testing.assert_allclose(mean_line.get_ydata(), [1.0 / e for e in range(1, 6)])
    assert [t.get_text() for t in ax.texts] == ["fold 1: no CCP projection happened"]
    notes = report.radius_notes([_radius_log("fold 1", 3, [])])
    assert notes and "fold 1: no CCP projection happened in its 3 epoch(s)" in notes[0]
    unmeasured = [dict(_radius_log("fold 0", 2, []), covering_radius=[])]
    assert report.covering_radius_figure(unmeasured) is None
    assert "not measured" in report.radius_notes(unmeasured)[0]


@pytest.mark.slow
def test_tiny_digits_ccp_run_reports_radius_projections_and_panels(tmp_path):
    output = tmp_path / "run"
    config = flags_lib.parse_flagfile("digits.cfg").replace(
        output_dir=str(output), steps_per_epoch=2, max_epochs=3, embedding_size=8,
        ccp_pool_size=2, ccp_proxies_per_class=2, ccp_patience=1, folds=2, classes_per_batch=2,
        samples_per_class=3, eval_batch_size=256, progress_bar=False, export=False,
        compute_nmi=False, seed=5, tsne_points=120, radius_images=60)
    protocol.run(config)
    text = (output / "report.md").read_text()
    projected = 0
    for fold in (0, 1):
        fold_dir = output / "repeat_0" / f"fold_{fold}"
        result = results_lib.FoldResult.load(str(fold_dir), repeat=0)
        series = result.training["covering_radius"]
        epochs = [r["epoch"] for r in series if r["point"] == "epoch"]
        assert epochs == list(range(1, result.training["epochs"] + 1))
        projections = [e["epoch"] for e in result.training["projections"]]
        assert [r["epoch"] for r in series if r["projection"]] == projections
        final = series[-1]
        assert final["point"] == "final" and final["epoch"] == result.training["best_epoch"]
        assert all(r["images"] == 60 and r["classes"] == result.train_classes
                   and 0 < r["mean"] <= r["max"] for r in series)
        with open(fold_dir / "logs" / covering.RADIUS_FILE) as handle:
            assert [json.loads(line) for line in handle] == series
        # The training subsample for the proxy panel: class indices of the proxy bank.
        assert set(result.train_sample.labels) <= set(result.proxies.labels)
        if projections:
            projected += 1
        else:
            assert f"fold {fold}: no CCP projection happened" in text
    # Which folds project depends on the numbers (sampler, kernels); each kind is checked when
    # it occurs, and the sentence of a fold without projections by the figure test above.
    assert projected <= 2
    assert "## Skipped queries" in text and "No query was skipped" in text
    assert "![Covering radius of the training classes by their proxies](covering_radius.png)" \
        in text
    for name in ("covering_radius.png", "tsne.png", "training_curves.png"):
        assert os.path.getsize(output / name) > 10_000
