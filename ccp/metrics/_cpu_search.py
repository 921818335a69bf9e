"""Exact k-NN search on the CPU: tiled BLAS matmuls plus threshold-pruned selection.

Queries are processed in blocks of ``block_rows``; a block's float32 scores against a range of
at most ``tile_columns`` references form one tile ``[b, w]`` (the only large array).  Each tile
is reduced to group maxima (64 scores per group, one cheap vectorized pass), the maxima raise
each query's running k-th-best threshold, and only groups whose maximum reaches the threshold
minus the margin are looked at element by element (``_candidates`` explains why nothing is
lost).  Selection of tile t runs in a worker thread while the main thread's BLAS computes tile
t + 1 (both release the GIL).

Self-retrieval (the query set is the reference set) computes each pair once: the tile of query
block I covers references ``[start_I, N)`` only; its rows serve block I's queries (row side,
with the query itself excluded by index) and its columns serve the later queries against block
I's references (column side), since ``-||x_i - x_j||^2 / 2`` is symmetric.  Blocks are taken
last to first, so that a column side meets queries that already have strong thresholds from
their own row side.
"""

import concurrent.futures

import numpy as np

from ccp.metrics._candidates import Candidates, exact_sq_distances, score_margins

# Scores per group: a group is looked at element by element only when its maximum reaches the
# query's limit, which the k best groups always do, so small groups mean few scores looked at;
# the maxima themselves cost one elementwise pass whatever the size.
GROUP = 16
# Group maxima offered to the thresholds are coarsened to at most this many per query and tile
# (any subset of the scores gives a valid threshold; fewer make the update cheaper).
_OFFERED = 256


def _coarsen(maxima, axis):
    """Merges runs of 4 groups along ``axis`` while more than ``_OFFERED`` groups remain (the
    leftover groups are dropped: offering a subset is valid)."""
    while maxima.shape[axis] > _OFFERED:
        quarter = maxima.shape[axis] // 4
        if axis == 1:
            maxima = maxima[:, :4 * quarter].reshape(len(maxima), 4, quarter).max(axis=1)
        else:
            maxima = maxima[:4 * quarter].reshape(quarter, 4, maxima.shape[1]).max(axis=1)
    return maxima


def _row_group_maxima(tile):
    """``[b, w] -> [b, G]`` maxima of the column groups ``{g, g + G, g + 2G, ...}`` with
    ``G = max(1, w // GROUP)`` (strided groups keep the reduction a vectorized elementwise
    max over long rows)."""
    b, w = tile.shape
    groups = max(1, w // GROUP)
    per_group = w // groups
    full = groups * per_group
    maxima = tile[:, :full].reshape(b, per_group, groups).max(axis=1)
    if full < w:
        tail = w - full
        np.maximum(maxima[:, :tail], tile[:, full:], out=maxima[:, :tail])
    return maxima


def _row_side(tile, rows, column_offset, candidates):
    """Feeds tile ``[b, w]`` (queries ``rows``, a slice; references from ``column_offset``) to
    the queries' thresholds and candidates."""
    b, w = tile.shape
    maxima = _row_group_maxima(tile)
    candidates.offer(rows, _coarsen(maxima, axis=1))
    limit = candidates.limits(rows)
    row, group = np.nonzero(maxima >= limit[:, None])
    if len(row) == 0:
        return
    groups = maxima.shape[1]
    members = group[:, None] + groups * np.arange(-(-w // groups))[None, :]
    valid = members < w
    members = np.where(valid, members, 0)
    values = tile[row[:, None], members]
    hit, slot = np.nonzero(valid & (values >= limit[row][:, None]))
    candidates.add(rows.start + row[hit], column_offset + members[hit, slot],
                   values[hit, slot])


def _column_side(tile, row_offset, columns, candidates):
    """Feeds tile ``[b, w]`` (references ``row_offset + [0, b)`` as rows, queries ``columns``,
    a slice, as columns) to those queries' thresholds and candidates: the transposed use of a
    symmetric tile."""
    b, w = tile.shape
    full = (b // GROUP) * GROUP
    parts = []
    if full:
        parts.append(tile[:full].reshape(b // GROUP, GROUP, w).max(axis=1))
    if full < b:
        parts.append(tile[full:].max(axis=0, keepdims=True))
    maxima = parts[0] if len(parts) == 1 else np.concatenate(parts)  # [H, w]
    candidates.offer(columns, _coarsen(maxima, axis=0).T)
    limit = candidates.limits(columns)
    group, column = np.nonzero(maxima >= limit[None, :])
    if len(group) == 0:
        return
    members = group[:, None] * GROUP + np.arange(GROUP)[None, :]
    valid = members < b
    members = np.where(valid, members, 0)
    values = tile[members, column[:, None]]
    hit, slot = np.nonzero(valid & (values >= limit[column][:, None]))
    candidates.add(columns.start + column[hit], row_offset + members[hit, slot],
                   values[hit, slot])


def _select(tile, rows, column_offset, candidates, same_set):
    """Feeds one tile ``[b, w]`` (queries ``rows``, references from ``column_offset``)."""
    b, w = tile.shape
    if same_set:
        # Mask the queries themselves (by index) where the tile overlaps the block's square.
        own = np.arange(max(rows.start, column_offset), min(rows.stop, column_offset + w))
        tile[own - rows.start, own - column_offset] = -np.inf
    _row_side(tile, rows, column_offset, candidates)
    if same_set:
        # Columns past the block's square serve those later queries (the square's own pairs
        # reach both of their queries through the row side already).
        first = max(column_offset, rows.stop)
        if first < column_offset + w:
            _column_side(tile[:, first - column_offset:], rows.start,
                         slice(first, column_offset + w), candidates)


def _tiles(num_queries, num_references, block_rows, tile_columns, same_set):
    """``(query slice, reference start, reference stop)`` in processing order."""
    starts = list(range(0, num_queries, block_rows))
    if same_set:
        starts.reverse()
    for start in starts:
        stop = min(start + block_rows, num_queries)
        first = start if same_set else 0
        for c0 in range(first, num_references, tile_columns):
            yield slice(start, stop), c0, min(c0 + tile_columns, num_references)


def search(queries, references, k, block_rows, tile_columns, same_set):
    """Exact k nearest references of every query: yields ``(rows, neighbours)`` per query
    block, ``rows`` a slice, ``neighbours [b, k]`` int64, nearest first, ties by lower index;
    with ``same_set`` (``references is queries``) a query is never its own neighbour.

    ``queries``/``references``: ``RowSource``.  ``k`` must not exceed the number of
    references available to a query.
    """
    n, m = queries.num_rows, references.num_rows
    margins = score_margins(queries.dim, queries.sq_norms, float(references.sq_norms.max()))
    candidates = Candidates(n, k, block_rows, margins)
    resident = references.augmented(0, m, as_query=False) if references.resident else None
    buffers = [np.empty(block_rows * min(tile_columns, m), np.float32) for _ in range(2)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        pending = [None, None]
        block_queries = (None, None)
        finished = []  # (rows, future of its last tile): query blocks with every tile submitted
        for t, (rows, c0, c1) in enumerate(_tiles(n, m, block_rows, tile_columns, same_set)):
            if block_queries[0] != rows.start:
                block_queries = (rows.start, queries.augmented(rows.start, rows.stop, True))
            refs = resident[c0:c1] if resident is not None else references.augmented(
                c0, c1, as_query=False)
            slot = t % 2
            if pending[slot] is not None:
                pending[slot].result()
            tile = buffers[slot][:(rows.stop - rows.start) * (c1 - c0)].reshape(
                rows.stop - rows.start, c1 - c0)
            np.matmul(block_queries[1], refs.T, out=tile)
            pending[slot] = pool.submit(_select, tile, rows, c0, candidates, same_set)
            # Earlier blocks are finished only now: their selection overlapped this matmul, and
            # finishing them overlaps this tile's selection (which touches other queries).
            while finished:
                done_rows, future = finished.pop(0)
                future.result()
                yield done_rows, _finish(candidates, done_rows, queries, references)
            if not same_set and c1 == m:
                finished.append((rows, pending[slot]))
        for done_rows, future in finished:
            future.result()
            yield done_rows, _finish(candidates, done_rows, queries, references)
        for future in pending:
            if future is not None:
                future.result()
    if same_set:
        # A query's last contribution comes from block 0's column side: finish at the end.
        for start in range(0, n, block_rows):
            rows = slice(start, min(start + block_rows, n))
            yield rows, _finish(candidates, rows, queries, references)


def _finish(candidates, rows, queries, references):
    return candidates.finish_block(
        rows.start // candidates.block_rows,
        lambda r, c: exact_sq_distances(queries, references, r, c))
