"""Retrieval metrics (exact k-nearest neighbours at scale) and clustering NMI (SPEC §8).

``retrieval_metrics`` ranks every reference by L2 distance to every query, exactly, without ever
holding a ``[num_queries, num_references]`` matrix: float32 scores are computed tile by tile
(``_cpu_search`` on numpy's BLAS, or ``_tf_search`` with TensorFlow on a GPU), a running
per-query threshold rejects almost every score without sorting, and the few candidates left are
put in the exact order (float64 distances where float32 scores are too close to call;
``_candidates`` has the argument).  Only the ``k`` nearest references of each query
(``k = max(max_i R_i, max(recall_at))``) are kept; the per-query bookkeeping (P@1, R-precision,
MAP@R, Recall@K) is vectorized numpy over ``[block, k]`` arrays.  When the query set is the
reference set, each pair's score is computed once and serves both of its queries.

The reference's other evaluation outputs: ``all_at_k`` (its AllAtK MAP@K / P@K / R@K lists,
``at_k.py``) and PCA before evaluation (``pca_fit`` / ``pca_transform`` / ``pca_project``,
``pca.py``).

Embeddings may be in-memory arrays, ``np.memmap``s, paths to ``.npy`` files, or any array-like
with ``.shape``, ``.dtype`` and row slicing; the latter three are streamed in blocks and never
loaded whole (``_sources``).

Conventions (SPEC §8, agreeing with pytorch-metric-learning's ``AccuracyCalculator``):
- ``R_i`` = number of references with query ``i``'s label, not counting the query itself when
  the query set is the reference set.  Queries with ``R_i = 0`` are left out of every mean and
  reported in ``num_skipped_queries``.
- When no reference set is given, each query is removed from its own neighbour list *by its
  index* (a duplicate of the query at distance 0 stays a valid neighbour).
- Neighbours are ordered by the float64 squared distance of the (normalized) float32
  embeddings; equal distances keep the lower reference index first.
"""

import numpy as np
import tensorflow as tf

from ccp.metrics import _cpu_search, _tf_search
from ccp.metrics._sources import RowSource, lipschitz_normalize
from ccp.metrics.at_k import all_at_k
from ccp.metrics.pca import pca_fit, pca_project, pca_transform

__all__ = ["retrieval_metrics", "nmi", "lipschitz_normalize",
           # The reference's evaluation outputs beyond SPEC §8 (float64 numpy).
           "all_at_k", "pca_fit", "pca_project", "pca_transform"]

# Memory budget of one float32 score tile; the CPU path keeps two alive (one being filled by
# BLAS while the other is searched).  Queries per tile: ``_BLOCK_ROWS`` for in-memory
# references, ``_STREAMED_BLOCK_ROWS`` for streamed ones (each query block re-reads the
# references, so taller blocks mean fewer passes over the file).
_TILE_BUDGET_BYTES = 128 * 2**20
_BLOCK_ROWS = 512
_STREAMED_BLOCK_ROWS = 2048
# GPU path: queries per block so that the block's [block, M] scores fit this budget.
_GPU_BLOCK_BUDGET_BYTES = 512 * 2**20


def _as_embeddings(x, name):
    """Validates an in-memory embedding matrix: ``[N, D]`` -> float32 numpy (used by ``nmi``)."""
    return np.ascontiguousarray(RowSource(x, name, normalize=False).rows)


def _as_labels(y, num_rows, name):
    """Validates labels: array-like ``[N]`` or ``[N, 1]`` of integers -> numpy ``[N]``."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(f"{name} must have shape [N] or [N, 1]; got shape {y.shape}")
    if y.shape[0] != num_rows:
        raise ValueError(
            f"{name} has {y.shape[0]} entries but the embeddings have {num_rows} rows"
        )
    if np.issubdtype(y.dtype, np.floating):
        if not (np.isfinite(y).all() and np.array_equal(y, np.round(y))):
            raise TypeError(f"{name} must be integer class ids; got non-integral floats")
        y = y.astype(np.int64)
    elif not (np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_):
        raise TypeError(f"{name} must be integer class ids; got dtype {y.dtype}")
    return y


def _cpu_tiling(num_references, streamed, query_chunk_size):
    """``(block_rows, tile_columns)`` of the CPU path: a tile ``[block_rows, tile_columns]``
    float32 stays within ``_TILE_BUDGET_BYTES``."""
    rows = int(query_chunk_size or (_STREAMED_BLOCK_ROWS if streamed else _BLOCK_ROWS))
    columns = max(1, min(num_references, _TILE_BUDGET_BYTES // (4 * rows)))
    return rows, columns


def _gpu_block_rows(num_references, query_chunk_size):
    return int(query_chunk_size or max(1, _GPU_BLOCK_BUDGET_BYTES // (4 * num_references)))


def retrieval_metrics(
    embeddings,
    labels,
    ref_embeddings=None,
    ref_labels=None,
    recall_at=(1, 2, 4, 8),
    normalize=True,
    query_chunk_size=None,
    use_tensorflow=None,
):
    """Exact kNN retrieval metrics of a query set against a reference set (SPEC §8).

    Args:
      embeddings: queries, float ``[N, D]``: a numpy array or tensor, or (streamed in blocks,
        never loaded whole) an ``np.memmap``, a path to a C-ordered ``.npy`` file, or any
        array-like with ``.shape``, ``.dtype`` and row slicing.
      labels: integer class ids of the queries, ``[N]`` or ``[N, 1]``.
      ref_embeddings: reference (gallery) set ``[M, D]`` (same kinds as ``embeddings``), or
        None: the query set is then also the reference set and each query is excluded from its
        own neighbour list by index.
      ref_labels: class ids of the references ``[M]`` or ``[M, 1]``; given iff
        ``ref_embeddings`` is.
      recall_at: the ``K`` values of Recall@K (positive ints).  ``K`` larger than the number of
        available references means "among all references".
      normalize: apply the Lipschitz normalization ``x / max(||x||, 1)`` (SPEC §2) to both sets
        before measuring distances.
      query_chunk_size: queries per block; None picks it from the memory budget (about 0.3 GB
        of transient score tiles).  The result does not depend on it.
      use_tensorflow: compute the scores with TensorFlow (TensorFloat-32 off) instead of numpy;
        None = exactly when a GPU is visible.  The result does not depend on it.

    Returns:
      dict of python floats in [0, 1]: ``precision_at_1``, ``r_precision``, ``map_at_r``,
      ``recall_at_{K}`` for each K, each the mean over queries with ``R_i >= 1``; and python
      ints ``num_queries`` (queries in those means) and ``num_skipped_queries`` (queries with
      no reference of their class, ``R_i = 0``).  MAP@R of query i is
      ``(1/R_i) sum_{j <= R_i} rel(j) P(j)`` with ``P(j)`` the precision at rank j.

    Raises:
      ValueError: bad shapes, empty sets, NaN/inf embeddings, mismatched dimensions, only one of
        ``ref_embeddings``/``ref_labels`` given, invalid ``recall_at``/``query_chunk_size``, or
        no query with a reference of its class.
      TypeError: non-numeric embeddings or non-integer labels.
    """
    if (ref_embeddings is None) != (ref_labels is None):
        raise ValueError("ref_embeddings and ref_labels must be given together (or both None)")
    recall_at = _checked_options(recall_at, query_chunk_size)
    queries = RowSource(embeddings, "embeddings", normalize)
    query_labels = _as_labels(labels, queries.num_rows, "labels")
    same_set = ref_embeddings is None
    if same_set:
        references, reference_labels = queries, query_labels
    else:
        references, reference_labels = _reference_set(ref_embeddings, ref_labels, normalize,
                                                       queries.dim)

    query_codes, reference_codes, num_relevant = _class_codes(
        query_labels, reference_labels, same_set)
    num_available = references.num_rows - (1 if same_set else 0)

    num_counted = int(np.count_nonzero(num_relevant >= 1))
    num_skipped = len(query_codes) - num_counted
    if num_counted == 0:
        raise ValueError(
            "no query has a reference of its own class (every R_i is 0): the retrieval "
            "metrics are undefined"
        )
    k = int(min(max(int(num_relevant.max()), max(recall_at)), num_available))

    searched = _search(queries, references, k, same_set, query_chunk_size, use_tensorflow)
    try:
        sums = _metric_sums(searched, k, recall_at, query_codes, reference_codes, num_relevant)
    finally:
        queries.close()
        references.close()

    result = {name: value / float(num_counted) for name, value in sums.items()}
    result["num_queries"] = num_counted
    result["num_skipped_queries"] = int(num_skipped)
    return result


def _reference_set(ref_embeddings, ref_labels, normalize, dim):
    """The reference rows and labels of a query != reference evaluation; checks the dimension."""
    references = RowSource(ref_embeddings, "ref_embeddings", normalize)
    reference_labels = _as_labels(ref_labels, references.num_rows, "ref_labels")
    if references.dim != dim:
        raise ValueError(
            f"embeddings have dimension {dim} but ref_embeddings have "
            f"dimension {references.dim}"
        )
    return references, reference_labels


def _search(queries, references, k, same_set, query_chunk_size, use_tensorflow):
    """The exact k nearest references of every query, as (row slice, indices [rows, k]) blocks:
    TensorFlow (TF32 off) when ``use_tensorflow`` (None: when a GPU is visible), else numpy."""
    if use_tensorflow is None:
        use_tensorflow = bool(tf.config.list_logical_devices("GPU"))
    if use_tensorflow:
        return _tf_search.search(
            queries, references, k, _gpu_block_rows(references.num_rows, query_chunk_size),
            same_set)
    block_rows, tile_columns = _cpu_tiling(
        references.num_rows, not references.resident, query_chunk_size)
    return _cpu_search.search(queries, references, k, block_rows, tile_columns, same_set)


def _checked_options(recall_at, query_chunk_size):
    """``recall_at`` validated and deduplicated (order kept); checks ``query_chunk_size``."""
    recall_at = tuple(recall_at)
    if not recall_at or not all(
        isinstance(k, (int, np.integer)) and not isinstance(k, bool) and k >= 1
        for k in recall_at
    ):
        raise ValueError(
            f"recall_at must be a non-empty sequence of positive ints; got {recall_at}"
        )
    if query_chunk_size is not None and not (
        isinstance(query_chunk_size, (int, np.integer)) and query_chunk_size >= 1
    ):
        raise ValueError(
            f"query_chunk_size must be a positive int or None; got {query_chunk_size}"
        )
    return tuple(dict.fromkeys(int(kk) for kk in recall_at))


def _class_codes(query_labels, reference_labels, same_set):
    """Compact class codes shared by both sets and R_i from the reference class histogram.

    Returns:
      query_codes ``[N]``, reference_codes ``[M]``, num_relevant ``[N]`` (R_i; the query
      itself not counted when ``same_set``).
    """
    classes, codes = np.unique(
        np.concatenate([query_labels, reference_labels]), return_inverse=True
    )
    query_codes = codes[: len(query_labels)]
    reference_codes = codes[len(query_labels):] if not same_set else query_codes
    num_relevant = np.bincount(reference_codes, minlength=len(classes))[query_codes]
    if same_set:
        num_relevant = num_relevant - 1
    return query_codes, reference_codes, num_relevant


def _metric_sums(searched, k, recall_at, query_codes, reference_codes, num_relevant):
    """Sums over the counted queries (R_i >= 1) of P@1, R-precision, MAP@R and Recall@K.

    Args:
      searched: iterable of (row slice, neighbour indices ``[rows, k]``) in rank order.
    Returns:
      dict metric name -> float sum (divide by the number of counted queries).
    """
    sums = {"precision_at_1": 0.0, "r_precision": 0.0, "map_at_r": 0.0}
    sums.update({f"recall_at_{kk}": 0.0 for kk in recall_at})
    ranks = np.arange(1, k + 1, dtype=np.float64)
    for block, neighbours in searched:
        rows = np.arange(block.start, block.stop)
        counted = num_relevant[rows] >= 1
        rows, neighbours = rows[counted], neighbours[counted]
        relevant = reference_codes[neighbours] == query_codes[rows][:, None]  # [c, k]
        r = num_relevant[rows]  # [c], 1 <= r <= k
        within_r = relevant & (ranks[None, :] <= r[:, None])
        hits_within_r = np.cumsum(within_r, axis=1)
        sums["precision_at_1"] += float(np.sum(relevant[:, 0]))
        sums["r_precision"] += float(np.sum(hits_within_r[:, -1] / r))
        sums["map_at_r"] += float(
            np.sum(np.sum(within_r * (hits_within_r / ranks[None, :]), axis=1) / r)
        )
        for kk in recall_at:
            sums[f"recall_at_{kk}"] += float(np.sum(np.any(relevant[:, :kk], axis=1)))
    return sums


def nmi(embeddings, labels, num_clusters=None, seed=0, normalize=True, n_init=1):
    """Normalized mutual information of a k-means clustering against the labels (SPEC §8).

    Args:
      embeddings: float ``[N, D]`` (numpy array or tensor).
      labels: integer class ids ``[N]`` or ``[N, 1]``.
      num_clusters: k of k-means; None = the number of distinct labels.
      seed: k-means ``random_state`` (the result is deterministic given the seed).
      normalize: apply the Lipschitz normalization (SPEC §2) first.
      n_init: k-means restarts (sklearn's ``n_init``, set explicitly).

    Returns:
      python float in [0, 1]: ``normalized_mutual_info_score(labels, clusters)`` (arithmetic
      averaging, sklearn's default).
    """
    from sklearn.cluster import KMeans
    from sklearn.metrics import normalized_mutual_info_score

    x = _as_embeddings(embeddings, "embeddings")
    y = _as_labels(labels, x.shape[0], "labels")
    if num_clusters is None:
        num_clusters = len(np.unique(y))
    if not (isinstance(num_clusters, (int, np.integer)) and 1 <= num_clusters <= x.shape[0]):
        raise ValueError(
            f"num_clusters must be an int in [1, {x.shape[0]}] (the number of embeddings); "
            f"got {num_clusters}"
        )
    if normalize:
        x = lipschitz_normalize(x)
    clusters = KMeans(n_clusters=int(num_clusters), n_init=n_init, random_state=seed).fit_predict(x)
    return float(normalized_mutual_info_score(y, clusters))
