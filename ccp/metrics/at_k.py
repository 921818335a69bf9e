"""The MAP@K / P@K / R@K lists of the reference's ``AllAtK`` metric, beyond SPEC §8's metrics.
numpy, float64 (``ccp.metrics.all_at_k``).

* :func:`all_at_k`: for each query with at least one positive (self excluded in
  self-retrieval), with R its number of positives and rel_i whether its i-th neighbour is one:
  ``P@k = hits(k) / k``; ``R@k = 1[hits(k) > 0]``; ``MAP@k = sum_{i<=k} P@i rel_i / min(R, k)``;
  and the same at k = R ("pN": R-precision, MAP@R, R@R). Means over those queries.
Neighbour order: ascending float64 squared distance ``|q|^2 + |r|^2 - 2 q.r`` (queries in
chunks), equal values to the lower reference index.
"""
import numpy as np

_QUERY_CHUNK = 1024


def _check_ks(ks):
    ks = [int(k) for k in ks]
    if not ks or any(k < 1 for k in ks):
        raise ValueError(f"K list (--eval_at_k) must hold positive integers, got {ks!r}")
    return sorted(set(ks))


def all_at_k(embeddings, labels, ks=(1,), ref_embeddings=None, ref_labels=None):
    """The reference's AllAtK lists.

    Args:
      embeddings: ``[Q, D]`` queries; labels: ``[Q]``.
      ks: the K values (sorted, deduplicated).
      ref_embeddings, ref_labels: ``[N, D]``, ``[N]`` references; None: self-retrieval over
        the queries (each query's own row excluded).
    Returns:
      dict with "k": the K list, "map_at_k", "precision_at_k", "recall_at_k" (lists aligned
      with "k"), "map_at_r", "r_precision", "recall_at_r" (the "pN" entries), floats; and
      "num_queries" (queries with at least one positive).
    """
    ks = _check_ks(ks)
    queries = np.asarray(embeddings, dtype=np.float64)
    labels = np.asarray(labels).reshape(-1)
    self_retrieval = ref_embeddings is None
    refs = queries if self_retrieval else np.asarray(ref_embeddings, dtype=np.float64)
    ref_labels = labels if self_retrieval else np.asarray(ref_labels).reshape(-1)
    if queries.shape[0] != labels.shape[0] or refs.shape[0] != ref_labels.shape[0]:
        raise ValueError("all_at_k: embeddings and labels must have the same number of rows")
    ref_sq = np.sum(refs * refs, axis=1)
    sums = np.zeros(3 * len(ks) + 3)
    count = 0
    for start in range(0, queries.shape[0], _QUERY_CHUNK):
        block = queries[start:start + _QUERY_CHUNK]
        dist = np.maximum(np.sum(block * block, axis=1)[:, None] + ref_sq[None]
                          - 2.0 * block @ refs.T, 0.0)
        match = labels[start:start + block.shape[0], None] == ref_labels[None]
        if self_retrieval:
            rows = np.arange(block.shape[0])
            dist[rows, start + rows] = np.inf
            match[rows, start + rows] = False
        positives = match.sum(axis=1)
        keep = positives > 0
        if not np.any(keep):
            continue
        dist, match, positives = dist[keep], match[keep], positives[keep]
        depth = min(refs.shape[0], max(ks[-1], int(positives.max())))
        order = np.argsort(dist, axis=1, kind="stable")[:, :depth]
        rel = np.take_along_axis(match, order, axis=1).astype(np.float64)
        if depth < ks[-1]:
            rel = np.pad(rel, ((0, 0), (0, ks[-1] - depth)))
        hits = np.cumsum(rel, axis=1)
        ranks = np.arange(1, rel.shape[1] + 1)
        precision = hits / ranks
        ap = np.cumsum(precision * rel, axis=1)
        r_idx = positives - 1
        rows = np.arange(rel.shape[0])
        k_idx = np.array(ks) - 1
        per_query = [ap[:, k_idx] / np.minimum(positives[:, None], np.array(ks)[None]),
                     precision[:, k_idx], (hits[:, k_idx] > 0).astype(np.float64)]
        at_r = [ap[rows, r_idx] / positives, precision[rows, r_idx],
                (hits[rows, r_idx] > 0).astype(np.float64)]
        sums += np.concatenate([p.sum(axis=0) for p in per_query] + [[a.sum()] for a in at_r])
        count += rel.shape[0]
    means = sums / max(count, 1)
    n = len(ks)
    return {"k": ks, "map_at_k": means[:n].tolist(), "precision_at_k": means[n:2 * n].tolist(),
            "recall_at_k": means[2 * n:3 * n].tolist(), "map_at_r": float(means[3 * n]),
            "r_precision": float(means[3 * n + 1]), "recall_at_r": float(means[3 * n + 2]),
            "num_queries": int(count)}
