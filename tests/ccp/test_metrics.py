"""ccp.metrics against an independent brute force (SPEC §8): full float64 distance matrix,
neighbours ordered by (distance, index), self excluded by index, explicit loops over queries."""
import numpy as np
import pytest
import tensorflow as tf

from ccp import metrics

RECALL_AT = (1, 2, 4, 8)


def _brute_force(queries, query_labels, refs=None, ref_labels=None, recall_at=RECALL_AT,
                 normalize=True):
    queries = np.asarray(queries, np.float64)
    query_labels = np.asarray(query_labels).reshape(-1)
    same_set = refs is None
    if same_set:
        refs, ref_labels = queries, query_labels
    refs = np.asarray(refs, np.float64)
    ref_labels = np.asarray(ref_labels).reshape(-1)
    if normalize:
        queries = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1.0)
        refs = refs / np.maximum(np.linalg.norm(refs, axis=1, keepdims=True), 1.0)
    dist = np.sum((queries[:, None, :] - refs[None, :, :]) ** 2, axis=-1)
    per_query = {"precision_at_1": [], "r_precision": [], "map_at_r": []}
    per_query.update({f"recall_at_{k}": [] for k in recall_at})
    skipped = 0
    for i in range(len(queries)):
        candidates = [j for j in range(len(refs)) if not (same_set and j == i)]
        order = sorted(candidates, key=lambda j: (dist[i, j], j))
        rel = [ref_labels[j] == query_labels[i] for j in order]
        r = sum(rel)
        if r == 0:
            skipped += 1
            continue
        per_query["precision_at_1"].append(float(rel[0]))
        per_query["r_precision"].append(sum(rel[:r]) / r)
        hits, ap = 0, 0.0
        for rank in range(1, r + 1):
            if rel[rank - 1]:
                hits += 1
                ap += hits / rank
        per_query["map_at_r"].append(ap / r)
        for k in recall_at:
            per_query[f"recall_at_{k}"].append(float(any(rel[:k])))
    result = {name: float(np.mean(v)) for name, v in per_query.items()}
    result["num_queries"] = len(queries) - skipped
    result["num_skipped_queries"] = skipped
    return result


def _assert_same(actual, expected, atol=1e-9):
    assert set(actual) == set(expected)
    for name, value in expected.items():
        assert actual[name] == pytest.approx(value, abs=atol), name
        if name.startswith("num_"):
            assert isinstance(actual[name], int)
        else:
            assert isinstance(actual[name], float) and 0.0 <= actual[name] <= 1.0


@pytest.fixture
def clustered():
    """60 points in 6 loose clusters (norms around 2, so normalization matters), 9 classes that
    cut across the clusters, and 2 singleton classes."""
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(6, 8)) * 2.0
    cluster = rng.integers(0, 6, size=60)
    x = (centers[cluster] + rng.normal(size=(60, 8))).astype(np.float32)
    labels = np.where(rng.random(60) < 0.7, cluster, rng.integers(0, 9, size=60))
    labels[[5, 17]] = [100, 101]  # singletons: R_i = 0
    return x, labels


def test_hand_worked_example():
    # 1-D points 0, 1, 2, 10, 11 with labels 0, 1, 0, 0, 0 (worked out by hand, SPEC §8):
    # q0: neighbours 1,2,3,4 -> rel 0111, R=3: P@1 0, RP 2/3, AP (1/2 + 2/3)/3 = 7/18
    # q1: label 1 has no other member -> skipped
    # q2: neighbours 1,0,3,4 -> rel 0111, R=3: 0, 2/3, 7/18
    # q3: neighbours 4,2,1,0 -> rel 1101, R=3: 1, 2/3, (1 + 1)/3
    # q4: neighbours 3,2,1,0 -> rel 1101, R=3: 1, 2/3, 2/3
    x = np.array([[0.0], [1.0], [2.0], [10.0], [11.0]], np.float32)
    labels = np.array([0, 1, 0, 0, 0])
    result = metrics.retrieval_metrics(x, labels, recall_at=(1, 2), normalize=False)
    expected = {
        "precision_at_1": 0.5,
        "r_precision": 2.0 / 3.0,
        "map_at_r": (7.0 / 18.0 * 2 + 2.0 / 3.0 * 2) / 4.0,
        "recall_at_1": 0.5,
        "recall_at_2": 1.0,
        "num_queries": 4,
        "num_skipped_queries": 1,
    }
    _assert_same(result, expected, atol=1e-12)
    _assert_same(_brute_force(x, labels, recall_at=(1, 2), normalize=False), expected, atol=1e-12)


def test_self_is_excluded_by_index_not_by_rank():
    # Rows 0 and 1 are the same point with different labels; row 2 is far away with label 0.
    # Query 1's neighbour list is [0, 2]: its nearest neighbour (row 0, distance 0) has the wrong
    # label, so P@1 = 0 for it.  Dropping the first-ranked neighbour instead would remove row 0
    # (ties: lower index first) and keep query 1 itself, giving a wrong P@1 of 1.
    x = np.array([[0.5, 0.0], [0.5, 0.0], [-0.5, 0.0]], np.float32)
    labels = np.array([1, 0, 0])
    result = metrics.retrieval_metrics(x, labels, recall_at=(1,))
    assert result["num_queries"] == 2 and result["num_skipped_queries"] == 1
    # query 1: [0 (label 1), 2 (label 0)] -> P@1 0; query 2: [0 (label 1), 1 (label 0)] -> P@1 0
    assert result["precision_at_1"] == 0.0
    assert result["map_at_r"] == 0.0
    _assert_same(result, _brute_force(x, labels, recall_at=(1,)))


def test_random_set_matches_brute_force(clustered):
    x, labels = clustered
    result = metrics.retrieval_metrics(x, labels)
    expected = _brute_force(x, labels)
    _assert_same(result, expected)
    values, counts = np.unique(labels, return_counts=True)
    singletons = int(np.sum(counts == 1))
    assert singletons >= 2 and {100, 101} <= set(values[counts == 1])
    assert result["num_skipped_queries"] == singletons
    assert result["num_queries"] == 60 - singletons
    assert 0.0 < result["map_at_r"] < result["r_precision"] <= 1.0


def test_exact_ties_keep_lower_reference_index_first():
    # Coordinates on a 1/8 grid with norms <= 1: normalization is the identity and every
    # distance is exact in float32, so there are many exact ties between *different* points and
    # between duplicates (labels differ among tied rows, so the tie order changes the metrics).
    rng = np.random.default_rng(1)
    base = rng.integers(-2, 3, size=(12, 3)) / 8.0
    x = base[rng.integers(0, 12, size=70)].astype(np.float32)
    labels = rng.integers(0, 5, size=70)
    result = metrics.retrieval_metrics(x, labels)
    _assert_same(result, _brute_force(x, labels), atol=1e-12)
    # The tie order matters here: ordering ties by *higher* index gives different numbers.
    reversed_result = metrics.retrieval_metrics(x[::-1], labels[::-1])
    assert any(abs(result[k] - reversed_result[k]) > 1e-6 for k in ("precision_at_1", "map_at_r"))
    _assert_same(reversed_result, _brute_force(x[::-1], labels[::-1]), atol=1e-12)


def test_query_with_more_duplicates_than_neighbours_needed():
    # Rows 0-4 coincide.  Query 4 (label 1, R = 3) needs 3 neighbours; its 4 nearest by
    # (distance, index) are rows 0-3, so it is not in that list itself: its neighbours are rows
    # 0, 1, 2 (labels 0, 0, 1): P@1 0, R-precision 1/3, AP (1/3) / 3.
    x = np.array([[0.25, 0.5]] * 5 + [[-0.5, 0.0], [0.0, -0.75]], np.float32)
    labels = np.array([0, 0, 1, 1, 1, 0, 1])
    full = metrics.retrieval_metrics(x, labels, recall_at=(1,))
    _assert_same(full, _brute_force(x, labels, recall_at=(1,)), atol=1e-12)
    # Query 4 alone, against all 7 rows, is the same set minus the self exclusion: compare via
    # the reference-set path with row 4 removed from the references.
    keep = [0, 1, 2, 3, 5, 6]
    alone = metrics.retrieval_metrics(x[4:5], labels[4:5], x[keep], labels[keep], recall_at=(1,))
    assert alone["precision_at_1"] == 0.0
    assert alone["r_precision"] == pytest.approx(1.0 / 3.0, abs=1e-12)
    assert alone["map_at_r"] == pytest.approx(1.0 / 9.0, abs=1e-12)


def test_duplicate_random_embeddings_match_brute_force():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(25, 6)).astype(np.float32) * 1.5
    x = np.concatenate([x, x[:15], x[:5]])  # rows repeated up to 3 times
    labels = rng.integers(0, 6, size=len(x))
    _assert_same(metrics.retrieval_metrics(x, labels), _brute_force(x, labels))


def test_query_set_against_separate_reference_set():
    # In-shop style: a query's exact copy in the gallery is a valid neighbour (distance 0), and
    # queries whose class is absent from the gallery are skipped.
    rng = np.random.default_rng(3)
    gallery = rng.normal(size=(50, 5)).astype(np.float32)
    gallery_labels = rng.integers(0, 10, size=50)
    queries = np.concatenate([gallery[:10], rng.normal(size=(30, 5)).astype(np.float32)])
    query_labels = np.concatenate([gallery_labels[:10], rng.integers(0, 12, size=30)])
    query_labels[-1] = 50  # class that the gallery does not have
    result = metrics.retrieval_metrics(queries, query_labels, gallery, gallery_labels)
    expected = _brute_force(queries, query_labels, gallery, gallery_labels)
    _assert_same(result, expected)
    assert result["num_skipped_queries"] >= 1
    assert result["num_queries"] + result["num_skipped_queries"] == 40
    # The 10 copied queries find themselves first.
    copies = metrics.retrieval_metrics(queries[:10], query_labels[:10], gallery, gallery_labels)
    assert copies["precision_at_1"] == 1.0


def test_result_does_not_depend_on_chunk_size(clustered, monkeypatch):
    x, labels = clustered
    expected = _brute_force(x, labels)
    for chunk in (1, 7, 13, 57, 500):  # 7 and 13 leave a ragged last chunk of the 57 queries
        _assert_same(metrics.retrieval_metrics(x, labels, query_chunk_size=chunk), expected)
    queries, refs = x[:45], x[45:]
    expected = _brute_force(queries, labels[:45], refs, labels[45:])
    for chunk in (4, 45):
        result = metrics.retrieval_metrics(queries, labels[:45], refs, labels[45:],
                                           query_chunk_size=chunk)
        _assert_same(result, expected)
    # The tile width follows the memory budget: a tiny budget forces 1-reference tiles.
    monkeypatch.setattr(metrics, "_TILE_BUDGET_BYTES", 1)
    _assert_same(metrics.retrieval_metrics(x, labels), _brute_force(x, labels))
    _assert_same(metrics.retrieval_metrics(x, labels, query_chunk_size=7),
                 _brute_force(x, labels))


def test_tiling_bounds_the_score_tile():
    # SOP test set: 60,502 references.
    rows, columns = metrics._cpu_tiling(60502, streamed=False, query_chunk_size=None)
    assert rows >= 256 and rows * columns * 4 <= metrics._TILE_BUDGET_BYTES  # efficient matmul
    rows, columns = metrics._cpu_tiling(10**9, streamed=True, query_chunk_size=None)
    assert rows * columns * 4 <= metrics._TILE_BUDGET_BYTES and columns < 10**9
    assert metrics._cpu_tiling(100, streamed=False, query_chunk_size=3) == (3, 100)
    assert metrics._gpu_block_rows(10**9, None) == 1


def test_labels_column_and_tensor_inputs(clustered):
    x, labels = clustered
    expected = _brute_force(x, labels)
    _assert_same(metrics.retrieval_metrics(x, labels[:, None]), expected)
    _assert_same(
        metrics.retrieval_metrics(tf.constant(x), tf.constant(labels[:, None], tf.int64)),
        expected,
    )
    _assert_same(metrics.retrieval_metrics(x.astype(np.float64), labels.astype(np.int32)), expected)


def test_normalize_on_and_off(clustered):
    x, labels = clustered
    x = x.copy()
    x[::3] *= 10.0  # norms far above 1: normalization changes the ranking
    on = metrics.retrieval_metrics(x, labels, normalize=True)
    off = metrics.retrieval_metrics(x, labels, normalize=False)
    _assert_same(on, _brute_force(x, labels, normalize=True))
    _assert_same(off, _brute_force(x, labels, normalize=False))
    assert on != off
    # Normalization is x / max(||x||, 1): vectors inside the unit ball are left alone.
    small = x / (2.0 * np.linalg.norm(x, axis=1, keepdims=True))
    _assert_same(metrics.retrieval_metrics(small, labels, normalize=True),
                 metrics.retrieval_metrics(small, labels, normalize=False))


def test_large_class_needs_more_neighbours_than_recall_at():
    # One class with 40 members: MAP@R needs the 39 nearest neighbours, far beyond max(recall_at).
    rng = np.random.default_rng(4)
    x = rng.normal(size=(60, 4)).astype(np.float32)
    labels = np.concatenate([np.zeros(40, int), rng.integers(1, 5, size=20)])
    x[:40] += 1.0
    result = metrics.retrieval_metrics(x, labels, recall_at=(1, 2))
    _assert_same(result, _brute_force(x, labels, recall_at=(1, 2)))
    # recall_at beyond the number of references means "among all references".
    result = metrics.retrieval_metrics(x, labels, recall_at=(1, 100))
    assert result["recall_at_100"] == 1.0


def test_recall_at_duplicates_are_counted_once(clustered):
    x, labels = clustered
    result = metrics.retrieval_metrics(x, labels, recall_at=(2, 2, 1))
    expected = _brute_force(x, labels, recall_at=(1, 2))
    _assert_same(result, expected)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(embeddings=np.zeros((0, 3)), labels=np.zeros(0, int)), ValueError, "empty"),
        (dict(embeddings=np.zeros((4, 3, 1)), labels=np.zeros(4, int)), ValueError, r"\[N, D\]"),
        (dict(embeddings=np.zeros((4, 3)), labels=np.zeros(5, int)), ValueError, "5 entries"),
        (dict(embeddings=np.zeros((4, 3)), labels=np.zeros((4, 2), int)), ValueError, r"\[N, 1\]"),
        (dict(embeddings=np.zeros((4, 3)), labels=np.array([0, 1, 0.5, 1])), TypeError, "integer"),
        (dict(embeddings=np.array([[0.0], [np.nan], [1.0]]), labels=[0, 0, 1]), ValueError, "NaN"),
        (dict(embeddings=np.array([[0.0], [np.inf]]), labels=[0, 0]), ValueError, "NaN or inf"),
        (dict(embeddings=np.zeros((4, 3)), labels=[0, 1, 2, 3]), ValueError, "every R_i is 0"),
        (dict(embeddings=np.zeros((1, 3)), labels=[0]), ValueError, "every R_i is 0"),
        (dict(embeddings=np.zeros((4, 3)), labels=[0, 0, 1, 1], ref_embeddings=np.zeros((2, 3))),
         ValueError, "together"),
        (dict(embeddings=np.zeros((4, 3)), labels=[0, 0, 1, 1], ref_embeddings=np.zeros((2, 4)),
              ref_labels=[0, 1]), ValueError, "dimension"),
        (dict(embeddings=np.zeros((4, 3)), labels=[0, 0, 1, 1], ref_embeddings=np.zeros((0, 3)),
              ref_labels=[]), ValueError, "ref_embeddings is empty"),
        (dict(embeddings=np.zeros((4, 3)), labels=[0, 0, 1, 1], recall_at=(0,)), ValueError,
         "recall_at"),
        (dict(embeddings=np.zeros((4, 3)), labels=[0, 0, 1, 1], query_chunk_size=0), ValueError,
         "query_chunk_size"),
        (dict(embeddings=np.array([["a"], ["b"]]), labels=[0, 0]), TypeError, "real-valued"),
        (dict(embeddings=np.array([[1e30], [0.0]]), labels=[0, 0], normalize=False), ValueError,
         "overflow"),
        (dict(embeddings=np.array([[1e30], [0.0]]), labels=[0, 0], ref_embeddings=np.ones((2, 1)),
              ref_labels=[0, 1], normalize=False), ValueError, "overflow"),
    ],
)
def test_bad_input_gives_clear_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        metrics.retrieval_metrics(**kwargs)


def test_agrees_with_pytorch_metric_learning():
    pytest.importorskip("torch")
    accuracy_calculator = pytest.importorskip(
        "pytorch_metric_learning.utils.accuracy_calculator"
    )
    calculator = accuracy_calculator.AccuracyCalculator(
        include=("precision_at_1", "r_precision", "mean_average_precision_at_r"),
        k="max_bin_count",
    )
    rng = np.random.default_rng(5)
    x = (rng.normal(size=(300, 16)) + 2.0 * rng.normal(size=(30, 16))[np.arange(300) % 30])
    x = x.astype(np.float32)
    labels = np.arange(300) % 30
    labels[::7] = rng.integers(0, 30, size=len(labels[::7]))
    x_normalized = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1.0)
    pml_names = {"precision_at_1": "precision_at_1", "r_precision": "r_precision",
                 "map_at_r": "mean_average_precision_at_r"}
    ours = metrics.retrieval_metrics(x, labels)
    theirs = calculator.get_accuracy(x_normalized, labels)
    for name, pml_name in pml_names.items():
        assert ours[name] == pytest.approx(theirs[pml_name], abs=1e-5), name
    ours = metrics.retrieval_metrics(x[:100], labels[:100], x[100:], labels[100:])
    theirs = calculator.get_accuracy(x_normalized[:100], labels[:100], x_normalized[100:],
                                     labels[100:])
    for name, pml_name in pml_names.items():
        assert ours[name] == pytest.approx(theirs[pml_name], abs=1e-5), name


def test_nmi_perfect_clustering_is_one():
    rng = np.random.default_rng(6)
    centers = np.eye(4, 6) * 0.9  # inside the unit ball, pairwise 1.27 apart
    labels = np.repeat([3, 1, 7, 2], 10)
    x = centers[np.repeat(np.arange(4), 10)] + 0.01 * rng.normal(size=(40, 6))
    assert metrics.nmi(x, labels) == pytest.approx(1.0, abs=1e-12)
    assert metrics.nmi(tf.constant(x, tf.float32), labels[:, None]) == pytest.approx(1.0, abs=1e-12)


def test_nmi_matches_direct_sklearn_computation(clustered):
    from sklearn.cluster import KMeans
    from sklearn.metrics import normalized_mutual_info_score

    x, labels = clustered
    normalized = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1.0)
    k = len(np.unique(labels))
    for normalize, data in ((True, normalized), (False, x)):
        clusters = KMeans(n_clusters=k, n_init=1, random_state=0).fit_predict(
            data.astype(np.float32))
        expected = normalized_mutual_info_score(labels, clusters)
        actual = metrics.nmi(x, labels, normalize=normalize)
        assert isinstance(actual, float) and 0.0 <= actual <= 1.0
        assert actual == pytest.approx(expected, abs=1e-6)
    # num_clusters overrides the number of classes.
    clusters = KMeans(n_clusters=3, n_init=1, random_state=0).fit_predict(normalized)
    assert metrics.nmi(x, labels, num_clusters=3) == pytest.approx(
        normalized_mutual_info_score(labels, clusters), abs=1e-6)


def test_nmi_errors():
    with pytest.raises(ValueError, match="num_clusters"):
        metrics.nmi(np.zeros((3, 2)), [0, 1, 2], num_clusters=4)
    with pytest.raises(ValueError, match="NaN"):
        metrics.nmi(np.array([[np.nan, 0.0], [0.0, 0.0]]), [0, 1])
    with pytest.raises(ValueError, match="3 entries"):
        metrics.nmi(np.zeros((2, 2)), [0, 1, 1])
