"""Retrieval metrics (exact, chunked k-nearest neighbours) and clustering NMI (SPEC §8).

``retrieval_metrics`` ranks every reference by L2 distance to every query, exactly, without ever
holding a ``[num_queries, num_references]`` matrix: queries are processed in chunks whose
distance block fits a fixed memory budget, and only the ``k`` nearest references of each query
(``k = max(max_i R_i, max(recall_at))``) leave the TF part.  The per-query bookkeeping
(P@1, R-precision, MAP@R, Recall@K) is vectorized numpy over ``[chunk, k]`` arrays.

Conventions (SPEC §8, agreeing with pytorch-metric-learning's ``AccuracyCalculator``):
- ``R_i`` = number of references with query ``i``'s label, not counting the query itself when
  the query set is the reference set.  Queries with ``R_i = 0`` are left out of every mean and
  reported in ``num_skipped_queries``.
- When no reference set is given, each query is removed from its own neighbour list *by its
  index* (a duplicate of the query at distance 0 stays a valid neighbour).
- Equal distances keep the lower reference index first.
"""

import concurrent.futures
import contextlib

import numpy as np
import tensorflow as tf

__all__ = ["retrieval_metrics", "nmi"]

# Budget for one chunk's [chunk, num_references] float32 score block (plus its share of the
# [chunk, k] neighbour bookkeeping).  The graph materializes one such block (the matmul output
# that top_k reads), so the transient memory of an evaluation is about this budget plus one
# augmented float32 copy of the reference set, independent of the number of queries.
# (SOP test, 60,502 x 512: ~1.3 GB peak RSS of the whole process, TF runtime included.)
_CHUNK_BUDGET_BYTES = 256 * 2**20


def lipschitz_normalize(x, out=None):
    """SPEC §2 forward pass, ``n(x) = x / max(||x||, 1)`` per row: ``[N, D] -> [N, D]`` float32
    (written into ``out`` when given).  Norms are accumulated in float64; no gradient is needed
    at evaluation time."""
    norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))
    scale = np.maximum(norms, 1.0).astype(np.float32)
    return np.divide(x, scale[:, None], out=out)


def _as_embeddings(x, name):
    """Validates an embedding matrix: array-like ``[N, D]`` with ``N, D >= 1`` -> float32 numpy."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape [N, D]; got shape {x.shape}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty (shape {x.shape}); at least one embedding is needed")
    if x.shape[1] == 0:
        raise ValueError(f"{name} has zero dimensions (shape {x.shape})")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise TypeError(f"{name} must be a real-valued array; got dtype {x.dtype}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        bad = int(np.count_nonzero(~np.isfinite(x).all(axis=1)))
        raise ValueError(f"{name} contains NaN or infinite values (in {bad} of {x.shape[0]} rows)")
    return x


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


@contextlib.contextmanager
def _full_precision_matmul():
    """Turns TensorFloat-32 off for the duration (on Ampere+ GPUs TF32 would round the inner
    products to ~1e-3 relative error and reorder near-ties); restores the previous setting."""
    previous = tf.config.experimental.tensor_float_32_execution_enabled()
    tf.config.experimental.enable_tensor_float_32_execution(False)
    try:
        yield
    finally:
        tf.config.experimental.enable_tensor_float_32_execution(previous)


def _squared_norms_within_float32(x):
    """``[N, D] -> [N]`` float64 squared norms; ValueError where float32 would overflow."""
    squared = np.einsum("ij,ij->i", x, x, dtype=np.float64)
    if np.any(squared > np.finfo(np.float32).max):
        raise ValueError(
            "squared embedding norms overflow float32; rescale the embeddings or use "
            "normalize=True"
        )
    return squared


def _augmented_references(references, normalize):
    """``[M, D] -> [M, D + 1]`` float32: each (optionally Lipschitz-normalized) row ``r``
    becomes ``[r, -|r|^2 / 2]``, built in one buffer (no other full-size copy).

    ||q - r||^2 = |q|^2 + |r|^2 - 2 q.r and |q|^2 is constant along a query's row, so ranking by
    the score ``q.r - |r|^2 / 2`` (descending) is ranking by distance (ascending).  With the
    query augmented as ``[q, 1]`` the score is one matmul: no extra pass over (or copy of) the
    ``[chunk, M]`` block, and identical reference rows get bit-identical scores, so exact
    distance ties stay exact ties.
    """
    augmented = np.empty((references.shape[0], references.shape[1] + 1), np.float32)
    body = augmented[:, :-1]
    if normalize:
        lipschitz_normalize(references, out=body)
    else:
        body[...] = references
    augmented[:, -1] = -0.5 * _squared_norms_within_float32(body)
    return augmented


# Dynamic shapes in the signature: one trace serves every chunk size (including a ragged last
# chunk), every reference set size and every k, so neither padding nor retracing is needed.
@tf.function(
    input_signature=(
        tf.TensorSpec([None, None], tf.float32),
        tf.TensorSpec([None, None], tf.float32),
        tf.TensorSpec([], tf.int32),
    )
)
def _top_k_neighbours(queries, augmented_references, k):
    """``[c, D], [M, D + 1], () -> [c, k]`` int32 indices of each query's k nearest references
    (squared L2), nearest first; equal distances keep the lower reference index first (the
    documented tie order of ``tf.math.top_k``)."""
    ones = tf.ones([tf.shape(queries)[0], 1], queries.dtype)
    scores = tf.linalg.matmul(
        tf.concat([queries, ones], axis=1), augmented_references, transpose_b=True
    )
    return _grouped_top_k(scores, k)


_GROUP = 64


def _grouped_top_k_numpy(scores, k):
    """numpy twin of :func:`_grouped_top_k`: ``[c, M] float32, int -> [c, k]`` indices, largest
    score first, ties by lower index (stable sorts on group maxima, then on candidates)."""
    rows, columns = scores.shape
    groups = -(-columns // _GROUP)
    if groups * _GROUP != columns:
        padded = np.full((rows, groups * _GROUP), -np.inf, np.float32)
        padded[:, :columns] = scores
    else:
        padded = scores
    grouped = padded.reshape(rows, groups, _GROUP)
    maxima = grouped.max(axis=2)
    chosen = np.sort(np.argsort(-maxima, axis=1, kind="stable")[:, :min(k, groups)], axis=1)
    candidates = np.take_along_axis(grouped, chosen[:, :, None], axis=1).reshape(rows, -1)
    candidate_index = (chosen[:, :, None] * _GROUP + np.arange(_GROUP)).reshape(rows, -1)
    best = np.argsort(-candidates, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(candidate_index, best, axis=1)


def _cpu_scores(queries, augmented_references):
    augmented_queries = np.concatenate([queries, np.ones((len(queries), 1), np.float32)], axis=1)
    # A transposed C-contiguous matrix is Fortran-ordered: BLAS reads it without a copy.
    return augmented_queries @ augmented_references.T


def _pipelined_cpu_search(chunks, augmented_references, k):
    """Yields ``(rows, neighbours [c, k])`` per chunk, selecting chunk i's neighbours in a worker
    thread while the main thread's BLAS matmul computes chunk i + 1's scores (both release the
    GIL), so selection hides behind the matmul. At most two score blocks are alive.
    """
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        pending = None
        for rows, queries in chunks:
            scores = _cpu_scores(queries, augmented_references)
            if pending is not None:
                yield pending[0], pending[1].result()
            pending = (rows, pool.submit(_grouped_top_k_numpy, scores, k))
            del scores
        if pending is not None:
            yield pending[0], pending[1].result()


def _top_k_neighbours_numpy(queries, augmented_references, k):
    """CPU twin of :func:`_top_k_neighbours` on numpy's BLAS, which is about 2.4x faster than
    TensorFlow's CPU matmul for these shapes on the 2-core machine of BENCHMARKS.md."""
    return _grouped_top_k_numpy(_cpu_scores(queries, augmented_references), int(k))


def _grouped_top_k(scores, k):
    """``[c, M], () -> [c, k]``: exactly ``tf.math.top_k(scores, k).indices`` (ties: lower index
    first), but selecting within the ``k`` groups of 64 columns with the largest maxima instead
    of over all M columns.

    Every top-k element lies in one of those groups: a group with a maximum above the k-th
    value holds one of the < k larger elements, and the groups holding the lowest-index elements
    equal to the k-th value are the lowest-index groups whose maximum equals it, which top_k's
    own tie order picks next. Candidates are gathered in index order, so the final top_k keeps
    the tie order. Selection then costs one pass (the maxima) instead of a top_k over [c, M].
    """
    rows, columns = tf.shape(scores)[0], tf.shape(scores)[1]
    groups = (columns + _GROUP - 1) // _GROUP
    padded = tf.pad(scores, [[0, 0], [0, groups * _GROUP - columns]],
                    constant_values=float("-inf"))
    grouped = tf.reshape(padded, [rows, groups, _GROUP])
    maxima = tf.reduce_max(grouped, axis=2)
    chosen = tf.sort(tf.math.top_k(maxima, k=tf.minimum(k, groups)).indices, axis=1)
    candidates = tf.reshape(tf.gather(grouped, chosen, batch_dims=1), [rows, -1])
    candidate_index = tf.reshape(chosen[:, :, None] * _GROUP + tf.range(_GROUP)[None, None, :],
                                 [rows, -1])
    best = tf.math.top_k(candidates, k=k, sorted=True).indices
    return tf.gather(candidate_index, best, batch_dims=1)


def _remove_self(neighbours, rows):
    """``[c, k + 1], [c] -> [c, k]``: drops reference ``rows[i]`` from row i of a nearest-first
    neighbour list, or the last entry where the query is not in the list (then the first k are
    already the k nearest other references).  Removal is by index, never by rank (SPEC §8)."""
    is_self = neighbours == rows[:, None]
    is_self[~is_self.any(axis=1), -1] = True
    return neighbours[~is_self].reshape(neighbours.shape[0], neighbours.shape[1] - 1)


def _auto_chunk_size(num_references, k):
    """Queries per chunk so that the chunk's distance block and neighbour arrays fit the
    budget: ``4 * M`` bytes of distances plus ~40 bytes per neighbour slot per query."""
    bytes_per_query = 4 * num_references + 40 * k
    return max(1, _CHUNK_BUDGET_BYTES // bytes_per_query)


def retrieval_metrics(
    embeddings,
    labels,
    ref_embeddings=None,
    ref_labels=None,
    recall_at=(1, 2, 4, 8),
    normalize=True,
    query_chunk_size=None,
):
    """Exact kNN retrieval metrics of a query set against a reference set (SPEC §8).

    Args:
      embeddings: queries, float ``[N, D]`` (numpy array or tensor).
      labels: integer class ids of the queries, ``[N]`` or ``[N, 1]``.
      ref_embeddings: reference (gallery) set ``[M, D]``, or None: the query set is then also
        the reference set and each query is excluded from its own neighbour list by index.
      ref_labels: class ids of the references ``[M]`` or ``[M, 1]``; given iff
        ``ref_embeddings`` is.
      recall_at: the ``K`` values of Recall@K (positive ints).  ``K`` larger than the number of
        available references means "among all references".
      normalize: apply the Lipschitz normalization ``x / max(||x||, 1)`` (SPEC §2) to both sets
        before measuring distances.
      query_chunk_size: queries per kNN chunk; None picks it from a ~256 MiB budget for the
        ``[chunk, M]`` distance block.  The result does not depend on it.

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
    recall_at = tuple(recall_at)
    if not recall_at or not all(
        isinstance(k, (int, np.integer)) and not isinstance(k, bool) and k >= 1
        for k in recall_at
    ):
        raise ValueError(
            f"recall_at must be a non-empty sequence of positive ints; got {recall_at}"
        )
    recall_at = tuple(dict.fromkeys(int(kk) for kk in recall_at))  # dedupe, keep order
    if query_chunk_size is not None and not (
        isinstance(query_chunk_size, (int, np.integer)) and query_chunk_size >= 1
    ):
        raise ValueError(
            f"query_chunk_size must be a positive int or None; got {query_chunk_size}"
        )

    queries = _as_embeddings(embeddings, "embeddings")
    query_labels = _as_labels(labels, queries.shape[0], "labels")
    same_set = ref_embeddings is None
    if same_set:
        references, reference_labels = queries, query_labels
    else:
        references = _as_embeddings(ref_embeddings, "ref_embeddings")
        reference_labels = _as_labels(ref_labels, references.shape[0], "ref_labels")
        if references.shape[1] != queries.shape[1]:
            raise ValueError(
                f"embeddings have dimension {queries.shape[1]} but ref_embeddings have "
                f"dimension {references.shape[1]}"
            )

    # Compact class codes shared by both sets; R_i from the reference class histogram.
    classes, codes = np.unique(
        np.concatenate([query_labels, reference_labels]), return_inverse=True
    )
    query_codes = codes[: len(query_labels)]
    reference_codes = codes[len(query_labels):] if not same_set else query_codes
    num_relevant = np.bincount(reference_codes, minlength=len(classes))[query_codes]
    if same_set:
        num_relevant = num_relevant - 1
    num_available = references.shape[0] - (1 if same_set else 0)

    counted = np.flatnonzero(num_relevant >= 1)
    num_skipped = len(query_codes) - len(counted)
    if len(counted) == 0:
        raise ValueError(
            "no query has a reference of its own class (every R_i is 0): the retrieval "
            "metrics are undefined"
        )
    k = int(min(max(int(num_relevant.max()), max(recall_at)), num_available))

    if normalize and not same_set:
        queries = lipschitz_normalize(queries)
    elif not same_set:
        _squared_norms_within_float32(queries)

    chunk = int(query_chunk_size or _auto_chunk_size(references.shape[0], k + 1))

    sums = {"precision_at_1": 0.0, "r_precision": 0.0, "map_at_r": 0.0}
    recall_sums = {kk: 0.0 for kk in recall_at}
    ranks = np.arange(1, k + 1, dtype=np.float64)
    # Scores on the GPU with TensorFlow when there is one, else on numpy's BLAS (same ranking
    # rule; tests check both give identical neighbours).
    on_cpu = not tf.config.list_logical_devices("GPU")
    with _full_precision_matmul():
        augmented = _augmented_references(references, normalize)
        reference_tensor = None if on_cpu else tf.constant(augmented)
        # Same set: ask for k + 1 neighbours; the query is among them unless k + 1 exact
        # duplicates of lower index rank first.  Either way _remove_self leaves the k nearest
        # *other* references (removal by index, SPEC §8).
        k_tensor = tf.constant(k + 1 if same_set else k, tf.int32)
        starts = range(0, len(counted), chunk)

        def chunk_queries(rows):
            if on_cpu:
                return augmented[rows, :-1] if same_set else queries[rows]
            if same_set:
                return tf.gather(reference_tensor, rows)[:, :-1]
            return tf.constant(queries[rows])

        if on_cpu:
            searched = _pipelined_cpu_search(
                ((counted[s:s + chunk], chunk_queries(counted[s:s + chunk])) for s in starts),
                augmented, int(k_tensor))
        else:
            searched = ((counted[s:s + chunk],
                         _top_k_neighbours(chunk_queries(counted[s:s + chunk]), reference_tensor,
                                           k_tensor).numpy()) for s in starts)
        for rows, neighbours in searched:
            if same_set:
                neighbours = _remove_self(neighbours, rows)
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
                recall_sums[kk] += float(np.sum(np.any(relevant[:, :kk], axis=1)))

    n = float(len(counted))
    result = {name: value / n for name, value in sums.items()}
    for kk in recall_at:
        result[f"recall_at_{kk}"] = recall_sums[kk] / n
    result["num_queries"] = len(counted)
    result["num_skipped_queries"] = int(num_skipped)
    return result


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
