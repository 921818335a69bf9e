"""Ensembles of fold models as the reference reports them (SPEC §6, issue 11 item 7).

With ``--repeats=N`` every class fold is trained N times. The reference reports the 512D
concatenation averaged over every combination of one model per fold (``N^F`` ensembles for F
folds), with the worst and the best. This module evaluates all those combinations from the fold
models' stored test embeddings (``repeat_R/fold_K/test_embeddings.npz``, already in memory as
:class:`~experiments.results.FoldResult`): each block is Lipschitz-normalized once and the
ensembles only concatenate blocks, nothing is embedded again. No TensorFlow here.
"""
import itertools

import numpy as np

from ccp.metrics import lipschitz_normalize
from experiments.results import METRIC_TITLES, Embedded, summarize

RANKING_METRIC = "map_at_r"  # worst / best ensemble


def _normalized(part):
    return None if part is None else Embedded(
        np.asarray(lipschitz_normalize(part.embeddings), dtype=np.float32), part.labels)


def concatenate(parts):
    """Embedded blocks ``[N, D_k]`` (already normalized) -> their concatenation ``[N, sum D_k]``.

    Raises ValueError when the blocks do not describe the same images (labels differ).
    """
    for part in parts[1:]:
        if not np.array_equal(part.labels, parts[0].labels):
            raise ValueError("fold models' test embeddings are of different images (labels "
                             "differ): the run folder mixes runs")
    return Embedded(np.concatenate([p.embeddings for p in parts], axis=1), parts[0].labels)


def combinations(num_repeats, num_folds):
    """Every choice of one repeat per fold: tuples ``(r_0, ..., r_{F-1})``, ``N^F`` of them,
    in lexicographic order (the first is the first repeat's ensemble)."""
    return list(itertools.product(range(num_repeats), repeat=num_folds))


def evaluate_combinations(per_repeat, metrics_fn):
    """Metrics of every one-model-per-fold ensemble.

    Args:
      per_repeat: ``per_repeat[r][k]`` is the FoldResult of fold ``k`` in repeat ``r``.
      metrics_fn: ``(query Embedded, reference Embedded or None) -> {metric: float}``.
    Returns:
      list of ``{"repeats": [r_0, ..., r_{F-1}], "metrics": {...}}`` in
      :func:`combinations` order.
    """
    num_repeats, num_folds = len(per_repeat), len(per_repeat[0])
    query = [[_normalized(per_repeat[r][k].query) for k in range(num_folds)]
             for r in range(num_repeats)]
    reference = [[_normalized(per_repeat[r][k].reference) for k in range(num_folds)]
                 for r in range(num_repeats)]
    evaluated = []
    for choice in combinations(num_repeats, num_folds):
        q = concatenate([query[r][k] for k, r in enumerate(choice)])
        ref = None
        if reference[0][0] is not None:
            ref = concatenate([reference[r][k] for k, r in enumerate(choice)])
        evaluated.append({"repeats": list(choice), "metrics": dict(metrics_fn(q, ref))})
    return evaluated


def summarize_ensembles(evaluated, first_repeat):
    """The ``results.json["ensembles"]`` record.

    Args:
      evaluated: :func:`evaluate_combinations` output.
      first_repeat: metrics of the first repeat's ensemble (with NMI when computed).
    Returns:
      dict: ``count``, ``ranked_by``, ``metrics`` ({metric: {mean, std, values}} over all
      ensembles), ``worst`` and ``best`` ({repeats, metrics}, by MAP@R), ``first_repeat``,
      ``combinations`` (the evaluated list).
    """
    names = list(evaluated[0]["metrics"])
    ranked = sorted(evaluated, key=lambda e: e["metrics"][RANKING_METRIC])
    return {
        "count": len(evaluated),
        "ranked_by": RANKING_METRIC,
        "metrics": {n: summarize([e["metrics"][n] for e in evaluated]) for n in names},
        "worst": ranked[0],
        "best": ranked[-1],
        "first_repeat": dict(first_repeat),
        "combinations": evaluated,
    }


COUNT_METRICS = ("num_queries", "num_skipped_queries")


def ensembles_table(summary, dims, num_folds, num_repeats):
    """Markdown table of the ensembles: mean ± std, worst, best and the first repeat's."""
    lines = [f"{dims * num_folds}D ensembles, one model per fold: {summary['count']} "
             f"combinations ({num_repeats}^{num_folds}); worst/best by MAP@R", "",
             "| metric | mean ± std | worst | best | first repeat |", "|---|---|---|---|---|"]
    for name, stats in summary["metrics"].items():
        title = METRIC_TITLES.get(name, name.replace("recall_at_", "R@"))
        # Rates in %; counts (num_queries, num_skipped_queries) as they are.
        scale, digits = (1, 0) if name in COUNT_METRICS else (100, 2)
        lines.append(
            f"| {title} | {scale * stats['mean']:.{digits}f} ± {scale * stats['std']:.{digits}f} "
            f"| {scale * summary['worst']['metrics'][name]:.{digits}f} "
            f"| {scale * summary['best']['metrics'][name]:.{digits}f} "
            f"| {scale * summary['first_repeat'].get(name, float('nan')):.{digits}f} |")
    return "\n".join(lines)
