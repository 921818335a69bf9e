"""Exact k-NN search with TensorFlow (the GPU path): float32 scores and ``tf.math.top_k`` on
the device, exact order from ``_candidates`` on the host.

Each query block's scores ``-||q - r||^2 / 2`` (one matmul of augmented rows, TensorFloat-32
off) go through ``top_k`` with some slack; a query's fetched list is complete when its last
fetched score is below its k-th best score minus the margin (every score that could belong to
the exact top k is then in it), otherwise it is fetched again with twice the slack.  The
candidates are then ranked exactly like the CPU path's, so both paths return identical
neighbours.
"""

import contextlib

import numpy as np
import tensorflow as tf

from ccp.metrics._candidates import Candidates, exact_sq_distances, score_margins


@contextlib.contextmanager
def full_precision_matmul():
    """Turns TensorFloat-32 off for the duration (on Ampere+ GPUs TF32 would round the inner
    products to ~1e-3 relative error, beyond the margin of ``_candidates``); restores the
    previous setting."""
    previous = tf.config.experimental.tensor_float_32_execution_enabled()
    tf.config.experimental.enable_tensor_float_32_execution(False)
    try:
        yield
    finally:
        tf.config.experimental.enable_tensor_float_32_execution(previous)


# Dynamic shapes: one trace serves every block size, reference set size and k.
@tf.function(
    input_signature=(
        tf.TensorSpec([None, None], tf.float32),
        tf.TensorSpec([None, None], tf.float32),
        tf.TensorSpec([], tf.int32),
    )
)
def _top_scores(queries, references, k):
    """``[c, D + 2], [M, D + 2], () -> ([c, k] float32, [c, k] int32)``: the k largest scores
    of each augmented query against the augmented references, largest first."""
    scores = tf.linalg.matmul(queries, references, transpose_b=True)
    return tf.math.top_k(scores, k=k, sorted=True)


def search(queries, references, k, block_rows, same_set):
    """Same contract as ``_cpu_search.search`` (yields ``(rows, neighbours [b, k])``)."""
    n, m = queries.num_rows, references.num_rows
    margins = score_margins(queries.dim, queries.sq_norms, float(references.sq_norms.max()))
    candidates = Candidates(n, k, block_rows, margins)
    with full_precision_matmul():
        reference_tensor = tf.constant(references.augmented(0, m, as_query=False))
        want = k + 1 if same_set else k  # the query itself may be among the fetched
        for start in range(0, n, block_rows):
            rows = slice(start, min(start + block_rows, n))
            augmented = queries.augmented(rows.start, rows.stop, as_query=True)
            todo = np.arange(rows.stop - rows.start)
            fetch = min(m, 2 * want + 8)
            while len(todo):
                values, indices = _top_scores(tf.constant(augmented[todo]), reference_tensor,
                                              tf.constant(fetch, tf.int32))
                values, indices = values.numpy(), indices.numpy().astype(np.int64)
                query = (rows.start + todo)[:, None]
                kept = indices != query if same_set else np.ones(indices.shape, bool)
                # k-th best score among the kept (non-self) entries of each row.
                offered = np.where(kept, values, -np.inf)[:, :want]
                kth = np.sort(offered, axis=1)[:, -k]
                limit = kth.astype(np.float64) - margins[rows.start + todo]
                complete = (values[:, -1] < limit) | (fetch == m)
                done = todo[complete]
                if len(done):
                    sel = kept[complete]
                    candidates.offer(rows.start + done, offered[complete])
                    r = np.broadcast_to((rows.start + done)[:, None], sel.shape)[sel]
                    candidates.add(r, indices[complete][sel], values[complete][sel])
                todo = todo[~complete]
                fetch = min(m, 2 * fetch)
            yield rows, candidates.finish_block(
                rows.start // block_rows,
                lambda r, c: exact_sq_distances(queries, references, r, c))
