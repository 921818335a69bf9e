"""Exact k nearest neighbours from float32 scores: running thresholds, candidates, re-ranking.

Scores are ``s = -||q - r||^2 / 2`` computed in float32 (one matmul of augmented rows, see
``RowSource.augmented``), so each carries a rounding error of at most ``delta`` (below).  The
neighbour order that is returned is the *exact* one: increasing float64 distance
``sum((q - r)^2)`` of the float32 embeddings, equal distances by lower reference index.

Why the float32 scores suffice to find it (``s~`` the float32 score, ``s`` the exact one,
``|s~ - s| <= delta``; ``t`` any k-th largest float32 score of a *subset* of a query's
references, which is what the running threshold is):
- ``t <= s~_(k) <= s_(k) + delta`` (at most k - 1 references have ``s~ > s_(k) + delta``), so
  every reference of the exact top k, having ``s~ >= s - delta >= s_(k) - delta``, has
  ``s~ >= t - 2 delta``: keeping the candidates with ``s~ >= t - 2 delta`` (the "margin") loses
  none of them, whatever subset ``t`` came from.
- Sorting the candidates by ``s~`` and cutting the list wherever two neighbours differ by more
  than the margin gives runs whose exact order between runs is already right (scores more than
  ``2 delta`` apart cannot swap); only runs with two or more members that reach into the first
  k places need exact distances, and there the float64 distance and the index decide.

``delta``: a float32 dot product of length L = D + 2 has error at most ``gamma_L * sum|terms|``
with ``gamma_L = L u / (1 - L u)``, ``u = 2^-24``, in any summation order (BLAS blocking, FMA);
here ``sum|terms| <= |q||r| + |q|^2/2 + |r|^2/2 <= |q|^2 + |r|^2``, and rounding the two
``-|x|^2/2`` entries to float32 adds ``u (|q|^2 + |r|^2) / 2``.  The margin used is twice the
``2 delta`` that the argument needs.
"""

import numpy as np

_UNIT_ROUNDOFF = 2.0**-24
_LOWEST = np.float32(np.finfo(np.float32).min)


def score_margins(dim, query_sq_norms, max_reference_sq_norm):
    """``[N] float64 -> [N] float64``: per query, twice the ``2 delta`` bound of the module
    docstring (so ``4 delta``), for scores over ``dim + 2`` augmented coordinates."""
    length = dim + 2
    gamma = length * _UNIT_ROUNDOFF / (1.0 - length * _UNIT_ROUNDOFF)
    delta = (gamma + _UNIT_ROUNDOFF) * (query_sq_norms + max_reference_sq_norm) + 1e-30
    return 4.0 * delta


class Candidates:
    """Running top-k thresholds and candidate neighbours of ``num_rows`` queries.

    Queries live in blocks of ``block_rows`` consecutive rows; candidates are kept per block.
    ``thresholds[i]`` is the k-th largest float32 score offered for query i so far (``-inf``
    before k scores were offered); a score is kept as a candidate when it is at least
    ``thresholds[i] - margins[i]``.
    """

    def __init__(self, num_rows, k, block_rows, margins):
        self.k, self.block_rows = k, block_rows
        self.margins = np.asarray(margins, np.float64)
        self.thresholds = np.full(num_rows, -np.inf, np.float32)
        self._top = np.full((num_rows, k), -np.inf, np.float32)
        self._blocks = [[] for _ in range(-(-num_rows // block_rows))]

    def limits(self, rows):
        """``[n]`` float32 lowest score still kept for ``rows`` (a slice or index array); never
        below the lowest finite float32, so ``-inf`` (an excluded pair) is never kept."""
        limit = self.thresholds[rows].astype(np.float64) - self.margins[rows]
        return np.maximum(limit, _LOWEST).astype(np.float32)

    def offer(self, rows, scores):
        """Raises the thresholds of ``rows`` (slice or ``[n]`` index) with ``scores [n, g]``, a
        few actual float32 scores of each (e.g. group maxima), each pair offered only once."""
        thresholds = self.thresholds[rows]
        better = np.flatnonzero(scores.max(axis=1) > thresholds)
        if len(better) == 0:
            return
        if isinstance(rows, slice):
            index = np.arange(rows.start, rows.stop)[better]
        else:
            index = np.asarray(rows)[better]
        pooled = np.concatenate([self._top[index], scores[better]], axis=1)
        top = np.partition(pooled, pooled.shape[1] - self.k, axis=1)[:, -self.k:]
        self._top[index] = top
        self.thresholds[index] = top.min(axis=1)

    def add(self, rows, columns, scores):
        """Stores candidates ``(rows[j], columns[j])`` with float32 ``scores[j]`` (1-D arrays,
        any order)."""
        if len(rows) == 0:
            return
        block = rows // self.block_rows
        if block[0] == block[-1] and np.all(block == block[0]):
            self._blocks[int(block[0])].append((rows, columns, scores))
            return
        order = np.argsort(block, kind="stable")
        rows, columns, scores, block = rows[order], columns[order], scores[order], block[order]
        cuts = np.flatnonzero(np.diff(block)) + 1
        for part in np.split(np.arange(len(rows)), cuts):
            lo, hi = part[0], part[-1] + 1
            self._blocks[int(block[lo])].append((rows[lo:hi], columns[lo:hi], scores[lo:hi]))

    def finish_block(self, index, exact_sq_distances):
        """Neighbours of the queries in block ``index``: ``[b, k]`` reference indices, nearest
        first, ties by lower index (exact order, module docstring).

        ``exact_sq_distances(rows, columns) -> [n] float64`` computes exact distances for the
        few candidate pairs whose float32 scores are too close to order.
        """
        k = self.k
        first = index * self.block_rows
        stop = min(first + self.block_rows, len(self.thresholds))
        parts = self._blocks[index]
        self._blocks[index] = []
        rows = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
        columns = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.int64)
        scores = np.concatenate([p[2] for p in parts]) if parts else np.zeros(0, np.float32)
        keep = scores >= self.limits(rows)
        rows, columns, scores = rows[keep], columns[keep], scores[keep]
        # Rank by score (descending), ties by index: the exact order except inside runs.
        order = np.lexsort((columns, -scores, rows))
        rows, columns, scores = rows[order], columns[order], scores[order].astype(np.float64)
        counts = np.bincount(rows - first, minlength=stop - first)
        if counts.min(initial=k) < k:
            raise RuntimeError("exact k-NN lost candidates (please report this as a bug)")
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        rank = np.arange(len(rows)) - np.repeat(starts, counts)
        joined = np.zeros(len(rows), bool)  # element continues the previous one's run
        joined[1:] = (rows[1:] == rows[:-1]) & (
            scores[:-1] - scores[1:] <= self.margins[rows[1:]])
        run = np.cumsum(~joined)
        run_start_rank = rank[~joined][run - 1]
        in_long_run = joined.copy()
        in_long_run[:-1] |= joined[1:]
        exact = in_long_run & (run_start_rank < k)
        key = np.zeros(len(rows), np.float64)
        if exact.any():
            key[exact] = exact_sq_distances(rows[exact], columns[exact])
            order = np.lexsort((columns, key, run))
            columns = columns[order]
        return columns[starts[:, None] + np.arange(k)[None, :]]


def exact_sq_distances(query_source, reference_source, rows, columns, chunk=65536):
    """``sum((q - r)^2)`` in float64 of the float32 rows: ``[n], [n] -> [n]``."""
    out = np.empty(len(rows), np.float64)
    for s in range(0, len(rows), chunk):
        q = query_source.take(rows[s:s + chunk]).astype(np.float64)
        q -= reference_source.take(columns[s:s + chunk])
        out[s:s + chunk] = np.einsum("ij,ij->i", q, q)
    return out
