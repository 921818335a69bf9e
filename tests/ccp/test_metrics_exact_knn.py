"""The exact k-NN engines of ccp.metrics against an independent brute force.

The brute force: float64 squared distances ``sum((q - r)^2)`` of the normalized float32 rows,
explicit per-query sort by (distance, index), the query itself removed by index.  The engines
(the CPU tiles with their symmetric and threshold-pruned selection, the TensorFlow path) must
return *identical* neighbour lists: ties, duplicates, near-ties that float32 cannot resolve,
ragged blocks and tiles, self-exclusion.
"""
import numpy as np
import pytest

from ccp import metrics
from ccp.metrics import _cpu_search, _tf_search
from ccp.metrics._candidates import score_margins
from ccp.metrics._sources import RowSource


def _brute_neighbours(queries, refs, k, same_set, normalize=True):
    def prepare(x):
        x = np.asarray(x, np.float32)
        if normalize:
            norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))
            x = (x / np.maximum(norms, 1.0).astype(np.float32)[:, None]).astype(np.float32)
        return x.astype(np.float64)

    q, r = prepare(queries), prepare(refs)
    out = []
    for i in range(len(q)):
        dist = np.sum((q[i][None, :] - r) ** 2, axis=1)
        index = np.arange(len(r))
        if same_set:
            dist, index = np.delete(dist, i), np.delete(index, i)
        out.append(index[np.lexsort((index, dist))[:k]])  # by distance, then index
    return np.array(out, np.int64)


def _engine_neighbours(search, queries, refs, k, same_set, **kwargs):
    q = RowSource(queries, "embeddings", True)
    r = q if same_set else RowSource(refs, "ref_embeddings", True)
    out = np.full((q.num_rows, k), -1, np.int64)
    seen = []
    for rows, neighbours in search(q, r, k, same_set=same_set, **kwargs):
        out[rows] = neighbours
        seen.append(rows.start)
    assert sorted(seen) == list(range(0, q.num_rows, kwargs["block_rows"]))
    return out


def _datasets():
    rng = np.random.default_rng(0)
    grid = (rng.integers(-3, 4, size=(230, 3)) / 8.0).astype(np.float32)  # exact ties
    dup = rng.normal(size=(120, 5)).astype(np.float32)
    dup = np.concatenate([dup, dup[:70], dup[:30], np.repeat(dup[5:6], 25, axis=0)])
    fine = (rng.normal(size=(257, 16)) * 0.4).astype(np.float32)
    # Near-ties below float32 resolution of the scores: x_j = (0.5 + j 2^-24, 0.25), exact in
    # float32, at distances from (0.3, 0.25) that differ by ~2e-8 (the scores' ulp is ~3e-8).
    near = np.zeros((90, 2), np.float32)
    near[:60, 0] = 0.5 + np.arange(60, dtype=np.float64)[::-1] * 2.0**-24
    near[:60, 1] = 0.25
    near[60:] = rng.normal(size=(30, 2)) * 0.1 - 0.5
    near[60] = (0.3, 0.25)
    return {"grid": grid, "duplicates": dup, "fine": fine, "near_ties": near}


DATASETS = _datasets()


@pytest.mark.parametrize("name", sorted(DATASETS))
@pytest.mark.parametrize("block_rows, tile_columns", [(64, 10**6), (7, 13), (100, 64), (1, 50)])
def test_cpu_self_retrieval_is_exact(name, block_rows, tile_columns):
    x = DATASETS[name]
    for k in ((1, 40) if block_rows > 1 else (11,)):
        expected = _brute_neighbours(x, x, k, same_set=True)
        got = _engine_neighbours(_cpu_search.search, x, x, k, True, block_rows=block_rows,
                                 tile_columns=tile_columns)
        np.testing.assert_array_equal(got, expected, err_msg=f"{name} k={k}")


@pytest.mark.parametrize("name", sorted(DATASETS))
@pytest.mark.parametrize("block_rows, tile_columns", [(64, 10**6), (9, 17)])
def test_cpu_query_against_references_is_exact(name, block_rows, tile_columns):
    x = DATASETS[name]
    queries, refs = x[::3], x[1::3]  # in-shop style: copies of queries may be in the gallery
    refs = np.concatenate([refs, queries[:10]])
    for k in (1, 12):
        expected = _brute_neighbours(queries, refs, k, same_set=False)
        got = _engine_neighbours(_cpu_search.search, queries, refs, k, False,
                                 block_rows=block_rows, tile_columns=tile_columns)
        np.testing.assert_array_equal(got, expected, err_msg=f"{name} k={k}")


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_tensorflow_path_is_exact_and_equals_cpu_path(name):
    x = DATASETS[name]
    for k in (1, 40):
        expected = _brute_neighbours(x, x, k, same_set=True)
        tf_path = _engine_neighbours(_tf_search.search, x, x, k, True, block_rows=37)
        np.testing.assert_array_equal(tf_path, expected, err_msg=f"{name} k={k}")
    queries, refs = x[::2], x[1::2]
    expected = _brute_neighbours(queries, refs, 9, same_set=False)
    np.testing.assert_array_equal(
        _engine_neighbours(_tf_search.search, queries, refs, 9, False, block_rows=16), expected)


def test_near_ties_follow_float64_distances_not_float32_scores():
    # The 60 near-tied points are ordered by index *descending* in distance from (0.3, 0.25)
    # (row 59 is nearest): float32 scores cannot tell most of them apart.
    x = DATASETS["near_ties"]
    q = RowSource(x, "embeddings", True)
    augmented_query = q.augmented(60, 61, as_query=True)
    scores = (augmented_query @ q.augmented(0, 60, as_query=False).T)[0]
    assert len(np.unique(scores)) < 60  # float32 ties among distinct distances
    got = _engine_neighbours(_cpu_search.search, x, x, 20, True, block_rows=64,
                             tile_columns=10**6)
    np.testing.assert_array_equal(got[60], np.arange(59, 39, -1))
    labels = np.zeros(90, int)
    labels[::2] = 1  # the order of the near-tied rows changes the metrics
    result = metrics.retrieval_metrics(x, labels, recall_at=(1,))
    reference = metrics.retrieval_metrics(x, labels, recall_at=(1,), use_tensorflow=True)
    assert result == reference


def test_margin_bounds_the_float32_score_error():
    # Worst case for the bound: many same-sign products; compare float32 BLAS scores with exact
    # float64 -||q - r||^2 / 2 across dimensions.
    rng = np.random.default_rng(3)
    for dim in (1, 8, 128, 512):
        x = np.abs(rng.normal(size=(120, dim))).astype(np.float32)
        source = RowSource(x, "embeddings", True)
        scores = source.augmented(0, 120, True) @ source.augmented(0, 120, False).T
        exact = -0.5 * np.sum((source.rows.astype(np.float64)[:, None, :]
                               - source.rows.astype(np.float64)[None, :, :]) ** 2, axis=-1)
        margins = score_margins(dim, source.sq_norms, source.sq_norms.max())
        error = np.abs(scores - exact).max(axis=1)
        assert np.all(error <= margins / 4.0), dim  # the margin is 4 delta
        assert margins.max() < 1e-3  # and small enough to reject almost everything


def _assert_same_metrics(actual, expected):
    assert actual.keys() == expected.keys()
    for name, value in expected.items():  # summation order differs with the block size
        assert actual[name] == pytest.approx(value, abs=1e-12), name


class _RowSliced:
    """An array-like with only ``shape``, ``dtype`` and row slicing, recording the slices."""

    def __init__(self, x):
        self._x, self.shape, self.dtype = x, x.shape, x.dtype
        self.largest = 0

    def __getitem__(self, rows):
        block = self._x[rows]
        self.largest = max(self.largest, len(block))
        return block


def test_streamed_sources_give_identical_metrics(tmp_path, monkeypatch):
    rng = np.random.default_rng(4)
    x = (rng.normal(size=(400, 6)) + 2.0 * rng.normal(size=(40, 6))[np.arange(400) % 40])
    x = x.astype(np.float32)
    x[200:230] = x[100:130]  # duplicates
    labels = np.arange(400) % 40
    expected = metrics.retrieval_metrics(x, labels)
    path = tmp_path / "embeddings.npy"
    np.save(path, x)
    monkeypatch.setattr(metrics, "_STREAMED_BLOCK_ROWS", 64)
    monkeypatch.setattr(metrics, "_TILE_BUDGET_BYTES", 64 * 64 * 4)  # [64, 64] tiles
    monkeypatch.setattr("ccp.metrics._sources._SCAN_ROWS", 50)
    sliced = _RowSliced(x)
    for source in (str(path), path, np.load(path, mmap_mode="r"), sliced):
        _assert_same_metrics(metrics.retrieval_metrics(source, labels), expected)
    assert 0 < sliced.largest <= 64  # never read whole
    # Query set against a streamed gallery.
    expected = metrics.retrieval_metrics(x[:150], labels[:150], x[150:], labels[150:])
    np.save(tmp_path / "gallery.npy", x[150:])
    _assert_same_metrics(metrics.retrieval_metrics(
        x[:150], labels[:150], tmp_path / "gallery.npy", labels[150:]), expected)


def test_streamed_source_errors(tmp_path):
    x = np.zeros((5, 3), np.float32)
    x[3, 1] = np.nan
    np.save(tmp_path / "nan.npy", x)
    with pytest.raises(ValueError, match="row 3"):
        metrics.retrieval_metrics(tmp_path / "nan.npy", [0, 0, 1, 1, 1])
    np.save(tmp_path / "fortran.npy", np.asfortranarray(np.ones((5, 3), np.float32)))
    with pytest.raises(ValueError, match="Fortran"):
        metrics.retrieval_metrics(tmp_path / "fortran.npy", [0, 0, 1, 1, 1])
    with pytest.raises(ValueError, match="no such .npy file"):
        metrics.retrieval_metrics(tmp_path / "missing.npy", [0, 0])
    np.save(tmp_path / "strings.npy", np.array([["a"], ["b"]]))
    with pytest.raises(TypeError, match="real-valued"):
        metrics.retrieval_metrics(tmp_path / "strings.npy", [0, 0])
