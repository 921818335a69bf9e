"""Typed fold results, their aggregation (SPEC §6) and the results table (no TensorFlow).

A :class:`FoldResult` is what one trained fold model leaves: its JSON record (metrics, training
summary) and, in memory, its test embeddings. The JSON part is ``fold_result.json``; the arrays
are ``test_embeddings.npz``; :meth:`FoldResult.save` / :meth:`FoldResult.load` round-trip both.
"""
import dataclasses
import os
from typing import Dict, Optional

import numpy as np

from experiments import run_folder

RESULT_FILE = "fold_result.json"
EMBEDDINGS_FILE = "test_embeddings.npz"
METRIC_ORDER = ("precision_at_1", "recall_at_2", "recall_at_4", "recall_at_8",
                "r_precision", "map_at_r", "nmi")
METRIC_TITLES = {"precision_at_1": "P@1 (R@1)", "r_precision": "R-precision", "map_at_r": "MAP@R",
                 "nmi": "NMI"}


# FoldResult attribute -> (array name, label array name) in test_embeddings.npz.
_ARRAY_NAMES = (("query", "query_labels"), ("reference", "reference_labels"),
                ("proxies", "proxy_labels"), ("train_sample", "train_sample_labels"))


@dataclasses.dataclass(frozen=True)
class Embedded:
    """Embeddings ``[N, D]`` (raw model outputs) and their labels ``[N]``."""

    embeddings: np.ndarray
    labels: np.ndarray


@dataclasses.dataclass
class FoldResult:
    """One fold model's outcome.

    Attributes:
      repeat, fold: which model; train_classes, val_classes: class counts of its split.
      test_metrics: ``{metric: float}`` on the test split.
      training: the JSON-safe summary of ``Trainer.fit`` (epochs, best_metric, history,
        projections, ...).
      seconds: training + evaluation time of this fold (0 when reloaded).
      query, reference: test embeddings (reference None when the query set is its own gallery).
      proxies: the loss's proxies ``[P, D]`` and their labels, or None.
      train_sample: embeddings of a training subsample with labels in the proxies' class index
        space (``0..train_classes-1``), for the report's proxy plot; or None.
    """

    repeat: int
    fold: int
    train_classes: int
    val_classes: int
    test_metrics: Dict[str, float]
    training: dict
    seconds: float
    query: Embedded
    reference: Optional[Embedded] = None
    proxies: Optional[Embedded] = None
    train_sample: Optional[Embedded] = None

    def to_json(self):
        return {"fold": self.fold, "repeat": self.repeat, "train_classes": self.train_classes,
                "val_classes": self.val_classes, "test_metrics": self.test_metrics,
                "training": self.training, "seconds": self.seconds}

    def save(self, fold_dir):
        """Writes the arrays, then the JSON record (its presence means the fold is done)."""
        arrays = {}
        for name, labels in _ARRAY_NAMES:
            part = getattr(self, name)
            if part is not None:
                arrays.update({name: part.embeddings, labels: part.labels})
        tmp = os.path.join(fold_dir, "tmp_" + EMBEDDINGS_FILE)
        np.savez(tmp, **arrays)
        os.replace(tmp, os.path.join(fold_dir, EMBEDDINGS_FILE))
        run_folder.write_json(os.path.join(fold_dir, RESULT_FILE), self.to_json())

    @staticmethod
    def exists(fold_dir):
        return all(os.path.exists(os.path.join(fold_dir, f))
                   for f in (RESULT_FILE, EMBEDDINGS_FILE))

    @classmethod
    def load(cls, fold_dir, repeat):
        record = run_folder.read_json(os.path.join(fold_dir, RESULT_FILE))
        with np.load(os.path.join(fold_dir, EMBEDDINGS_FILE)) as stored:
            arrays = {k: stored[k] for k in stored.files}

        parts = {name: Embedded(arrays[name], arrays[labels]) if name in arrays else None
                 for name, labels in _ARRAY_NAMES}
        return cls(repeat=repeat, fold=record["fold"], train_classes=record["train_classes"],
                   val_classes=record["val_classes"], test_metrics=record["test_metrics"],
                   training=record["training"], seconds=0.0, **parts)


def json_safe(value):
    """numpy scalars/arrays, tuples and dataclasses -> plain JSON values."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if dataclasses.is_dataclass(value):
        return json_safe(dataclasses.asdict(value))
    return value


def summarize(values):
    values = np.asarray(values, dtype=np.float64)
    return {"mean": float(values.mean()), "std": float(values.std()), "values": values.tolist()}


def aggregate(config, per_repeat, concatenated):
    """The results dict of results.json.

    Args:
      per_repeat: per repeat, the list of its FoldResults.
      concatenated: per repeat, the metrics of the fold models' concatenation (None for 1 fold).
    """
    folds, repeats = config.protocol.folds, config.protocol.repeats
    fold_metrics = [r.test_metrics for results in per_repeat for r in results]
    names = list(fold_metrics[0])
    if repeats > 1:  # fold average per repeat, then mean/std over repeats
        average = {n: summarize([np.mean([r.test_metrics[n] for r in results])
                                 for results in per_repeat]) for n in names}
    else:  # std over folds
        average = {n: summarize([m[n] for m in fold_metrics]) for n in names}
    results = {
        "dataset": config.data.dataset,
        "method": config.method,
        "embedding_size": config.model.embedding_size,
        "folds": folds,
        "repeats": repeats,
        "per_fold": [{"repeat": r.repeat, "fold": r.fold, "metrics": r.test_metrics,
                      "best_validation_map_at_r": r.training.get("best_metric")}
                     for results in per_repeat for r in results],
        "average": average,
    }
    if folds > 1:
        results["concatenated"] = {n: summarize([c[n] for c in concatenated]) for n in names}
    results["table"] = results_table(results)
    return results


def _metric_names(average):
    names = [m for m in METRIC_ORDER if m in average]
    names += sorted(m for m in average if m.startswith("recall_at_")
                    and m not in names and m != "recall_at_1")
    return names


def results_table(results):
    """Markdown table: metric rows, columns 128D fold average and the concatenation."""
    dims, folds = results["embedding_size"], results["folds"]
    header, rule = f"| metric | {dims}D (fold average) |", "|---|---|"
    if folds > 1:
        header += f" {dims * folds}D (concatenation) |"
        rule += "---|"
    lines = [f"**{results['method']}** on {results['dataset']}", "", header, rule]
    for name in _metric_names(results["average"]):
        mean = results["average"][name]
        title = METRIC_TITLES.get(name, name.replace("recall_at_", "R@"))
        row = f"| {title} | {100 * mean['mean']:.2f}"
        if len(mean["values"]) > 1:
            row += f" ± {100 * mean['std']:.2f}"
        row += " |"
        if folds > 1:
            row += f" {100 * results['concatenated'][name]['mean']:.2f} |"
        lines.append(row)
    return "\n".join(lines)
