"""The benchmark protocol end to end (SPEC §6): fold models, test metrics, ensemble, export.

Layout of ``output_dir``::

  config.json                  the configuration (a resumed run must match it)
  repeat_R/fold_K/             checkpoints/, logs/ (events.jsonl, TensorBoard),
                               model.weights.h5, test_embeddings.npz, fold_result.json
  results.json, results.md     per-fold 128D metrics, their average, the concatenation
  export/fold_K, export/ensemble   SavedModel embedders (last repeat)
  report.md, *.png             plots
"""
import dataclasses
import json
import os
import time

import numpy as np
from absl import logging

import ccp
import data_pipelines
from experiments import builders
from experiments import config as config_lib
from experiments import report as report_lib

METRIC_ORDER = ("precision_at_1", "recall_at_2", "recall_at_4", "recall_at_8",
                "r_precision", "map_at_r", "nmi")
METRIC_TITLES = {"precision_at_1": "P@1 (R@1)", "r_precision": "R-precision", "map_at_r": "MAP@R",
                 "nmi": "NMI"}


def _write_json(path, payload):
    tmp = path + ".tmp"
    with open(tmp, "w") as handle:
        json.dump(payload, handle, indent=2, sort_keys=True)
    os.replace(tmp, path)  # atomic: a killed run never leaves half a file


def _read_json(path):
    with open(path) as handle:
        return json.load(handle)


def check_resume_config(config, output_dir):
    """Stores config.json; a re-run in the same folder must use the same training settings."""
    path = os.path.join(output_dir, "config.json")
    current = dataclasses.asdict(config)
    if os.path.exists(path):
        stored = _read_json(path)
        # Settings that do not change what is trained may differ between runs.
        free = {"output_dir", "progress_bar", "report", "export", "tsne_points", "data_dir",
                "repeats", "compute_nmi", "eval_batch_size"}
        changed = sorted(
            k for k in current
            if k not in free and json.loads(json.dumps(current[k])) != stored.get(k)
        )
        if changed:
            raise config_lib.ConfigError(
                f"{output_dir} holds a run with different settings ({', '.join(changed)}); "
                "use another --output_dir or the same flags to resume"
            )
    _write_json(path, current)


@dataclasses.dataclass
class EvaluationSets:
    """Query set and reference set (None = the query set itself) of the test split."""

    query: object
    reference: object = None


def evaluation_sets(splits):
    if splits.query is not None and splits.gallery is not None:
        return EvaluationSets(query=splits.query, reference=splits.gallery)
    return EvaluationSets(query=splits.test)


def embed_records(config, model, records):
    embeddings, labels = ccp.training.embed_dataset(model, builders.eval_dataset(config, records))
    return embeddings, labels


def test_metrics(config, query, reference=None):
    """Retrieval metrics (+ NMI) of query embeddings against the reference set.

    Args:
      query: (embeddings [N, D], labels [N]); reference: the same for the gallery, or None.
    """
    q_emb, q_lab = query
    r_emb, r_lab = reference if reference is not None else (None, None)
    metrics = ccp.metrics.retrieval_metrics(
        q_emb, q_lab, ref_embeddings=r_emb, ref_labels=r_lab, recall_at=config.recall_at
    )
    if config.compute_nmi:
        all_emb = q_emb if r_emb is None else np.concatenate([q_emb, r_emb])
        all_lab = q_lab if r_lab is None else np.concatenate([q_lab, r_lab])
        metrics["nmi"] = ccp.metrics.nmi(all_emb, all_lab, seed=config.seed)
    return {k: float(v) for k, v in metrics.items()}


def train_fold(config, fold, fold_dir, seed, strategy):
    """Trains one fold model (resuming from its checkpoint) and returns (model, loss, result)."""
    train_records = fold.train
    val_records = fold.val
    num_classes = train_records.num_classes
    with strategy.scope():
        model = builders.build_model(config, name=f"fold_{fold.index}")
        loss = builders.build_loss(config, num_classes)
        trainer = ccp.training.Trainer(
            **builders.trainer_arguments(config, model, loss, strategy, fold_dir)
        )
    validation = builders.eval_dataset(config, val_records) if val_records is not None else None
    projection_pool = (
        builders.proxy_pool_fn(config, train_records, seed) if config.ccp else None
    )
    result = trainer.fit(
        builders.train_dataset_fn(config, train_records, seed),
        validation_data=validation,
        proxy_pool_fn=projection_pool,
    )
    return model, loss, result


def run_fold(config, fold, fold_dir, seed, strategy, eval_sets):
    """Trains (or reloads) one fold; returns its record with test embeddings and metrics."""
    result_path = os.path.join(fold_dir, "fold_result.json")
    weights_path = os.path.join(fold_dir, "model.weights.h5")
    embeddings_path = os.path.join(fold_dir, "test_embeddings.npz")
    if os.path.exists(result_path) and os.path.exists(embeddings_path):
        logging.info("fold %s already finished in %s: not retrained", fold.index, fold_dir)
        stored = np.load(embeddings_path)
        record = _read_json(result_path)
        record["query"] = (stored["query"], stored["query_labels"])
        record["reference"] = (
            (stored["reference"], stored["reference_labels"]) if "reference" in stored else None
        )
        return record
    os.makedirs(fold_dir, exist_ok=True)
    started = time.time()
    model, loss, result = train_fold(config, fold, fold_dir, seed, strategy)
    model.save_weights(weights_path)
    query = embed_records(config, model, eval_sets.query)
    reference = (
        embed_records(config, model, eval_sets.reference) if eval_sets.reference is not None else None
    )
    metrics = test_metrics(config, query, reference)
    arrays = {"query": query[0], "query_labels": query[1]}
    if reference is not None:
        arrays.update(reference=reference[0], reference_labels=reference[1])
    proxies = getattr(loss, "proxies", None)
    if proxies is not None:
        arrays.update(proxies=np.asarray(proxies.numpy()),
                      proxy_labels=np.asarray(loss.proxy_labels))
    np.savez(embeddings_path, **arrays)
    record = {
        "fold": fold.index,
        "train_classes": int(fold.train.num_classes),
        "val_classes": int(fold.val.num_classes) if fold.val is not None else 0,
        "test_metrics": metrics,
        "training": _json_safe(result),
        "seconds": time.time() - started,
    }
    _write_json(result_path, record)
    logging.info("fold %s: test MAP@R %.4f", fold.index, metrics["map_at_r"])
    record["query"], record["reference"] = query, reference
    return record


def _json_safe(value):
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if dataclasses.is_dataclass(value):
        return _json_safe(dataclasses.asdict(value))
    return value


def ensemble_metrics(config, fold_records):
    """Metrics of the concatenation of the folds' normalized embeddings (the 512D model)."""
    query = (
        np.concatenate([ccp.metrics.lipschitz_normalize(r["query"][0]) for r in fold_records], axis=1),
        fold_records[0]["query"][1],
    )
    reference = None
    if fold_records[0]["reference"] is not None:
        reference = (
            np.concatenate([ccp.metrics.lipschitz_normalize(r["reference"][0]) for r in fold_records], axis=1),
            fold_records[0]["reference"][1],
        )
    return test_metrics(config, query, reference)


def summarize(values):
    values = np.asarray(values, dtype=np.float64)
    return {"mean": float(values.mean()), "std": float(values.std()), "values": values.tolist()}


def results_table(results):
    """Markdown table: metric rows, columns 128D fold average and the concatenation."""
    dims = results["embedding_size"]
    concat_dims = dims * results["folds"]
    header = f"| metric | {dims}D (fold average) |"
    rule = "|---|---|"
    if results["folds"] > 1:
        header += f" {concat_dims}D (concatenation) |"
        rule += "---|"
    lines = [f"**{results['method']}** on {results['dataset']}", "", header, rule]
    names = [m for m in METRIC_ORDER if m in results["average"]]
    names += sorted(m for m in results["average"] if m.startswith("recall_at_")
                    and m not in names and m != "recall_at_1")
    for name in names:
        mean = results["average"][name]
        row = f"| {METRIC_TITLES.get(name, name.replace('recall_at_', 'R@'))} | {100 * mean['mean']:.2f}"
        if len(mean["values"]) > 1:
            row += f" ± {100 * mean['std']:.2f}"
        row += " |"
        if results["folds"] > 1:
            row += f" {100 * results['concatenated'][name]['mean']:.2f} |"
        lines.append(row)
    return "\n".join(lines)


def method_name(config):
    name = {"contrastive": "C2", "cosine_contrastive": "C1", "triplet": "Triplet",
            "multi_similarity": "MS", "margin": "Margin", "proxy_anchor": "ProxyAnchor",
            "proxy_nca": "ProxyNCA++", "soft_triple": "SoftTriple"}[config.loss]
    if config.ccp:
        name += "-CCP"
    if config.xbm:
        name += " + XBM"
    return name


def run(config):
    """Runs the whole protocol; returns the results dict (also written to results.json)."""
    os.makedirs(config.output_dir, exist_ok=True)
    check_resume_config(config, config.output_dir)
    builders.set_precision(config)
    strategy = builders.build_strategy(config)
    if config.dataset == "digits":  # embedded, rendered at the model's input size
        splits = data_pipelines.load("digits", None, image_size=config.resolved_image_size)
    else:
        splits = data_pipelines.load(config.dataset, config.data_dir)
    eval_sets = evaluation_sets(splits)
    folds = data_pipelines.class_folds(splits.train, num_folds=config.folds)
    per_repeat = []
    for repeat in range(config.repeats):
        seed = config.seed + repeat
        records = []
        for fold in folds:
            fold_dir = os.path.join(config.output_dir, f"repeat_{repeat}", f"fold_{fold.index}")
            records.append(run_fold(config, fold, fold_dir, seed + 1000 * fold.index,
                                    strategy, eval_sets))
        concatenated = ensemble_metrics(config, records) if config.folds > 1 else None
        per_repeat.append((records, concatenated))

    fold_metrics = [r["test_metrics"] for records, _ in per_repeat for r in records]
    names = list(fold_metrics[0])
    results = {
        "dataset": config.dataset,
        "method": method_name(config),
        "embedding_size": config.embedding_size,
        "folds": config.folds,
        "repeats": config.repeats,
        "per_fold": [
            {"repeat": i, "fold": r["fold"], "metrics": r["test_metrics"],
             "best_validation_map_at_r": r["training"].get("best_metric")
             if isinstance(r["training"], dict) else None}
            for i, (records, _) in enumerate(per_repeat) for r in records
        ],
        # Fold average per repeat, then mean/std over repeats (std over folds when 1 repeat).
        "average": {
            n: summarize(
                [np.mean([r["test_metrics"][n] for r in records]) for records, _ in per_repeat]
                if config.repeats > 1 else [m[n] for m in fold_metrics]
            )
            for n in names
        },
    }
    if config.folds > 1:
        results["concatenated"] = {
            n: summarize([c[n] for _, c in per_repeat]) for n in names
        }
    results["table"] = results_table(results)
    _write_json(os.path.join(config.output_dir, "results.json"), results)
    with open(os.path.join(config.output_dir, "results.md"), "w") as handle:
        handle.write(results["table"] + "\n")

    last_records = per_repeat[-1][0]
    if config.export:
        export_models(config, folds, last_records)
    if config.report:
        write_experiment_report(config, results, last_records)
    return results


def _load_fold_model(config, fold_dir, index):
    model = builders.build_model(config, name=f"fold_{index}")
    model.load_weights(os.path.join(fold_dir, "model.weights.h5"))
    return model


def export_models(config, folds, records):
    repeat_dir = os.path.join(config.output_dir, f"repeat_{config.repeats - 1}")
    models = [
        _load_fold_model(config, os.path.join(repeat_dir, f"fold_{fold.index}"), fold.index)
        for fold in folds
    ]
    export_dir = os.path.join(config.output_dir, "export")
    for fold, model in zip(folds, models):
        ccp.export.export_embedder(model, os.path.join(export_dir, f"fold_{fold.index}"))
    if len(models) > 1:
        ccp.export.export_embedder(models, os.path.join(export_dir, "ensemble"))
    logging.info("exported SavedModel embedders to %s", export_dir)


def read_fold_log(fold_dir, name):
    """Epoch records and projection events of a fold from its events.jsonl."""
    epochs, projections = [], []
    path = os.path.join(fold_dir, "logs", "events.jsonl")
    if os.path.exists(path):
        with open(path) as handle:
            for line in handle:
                event = json.loads(line)
                if event.get("event") == "epoch":
                    epochs.append(event)
                elif event.get("event") == "projection":
                    projections.append(event)
    return {"name": name, "epochs": epochs, "projections": projections}


def write_experiment_report(config, results, records):
    repeat_dir = os.path.join(config.output_dir, f"repeat_{config.repeats - 1}")
    logs = [read_fold_log(os.path.join(repeat_dir, f"fold_{r['fold']}"), f"fold {r['fold']}")
            for r in records]
    figures = []
    curves = os.path.join(config.output_dir, "training_curves.png")
    report_lib.plot_training_curves(logs, curves)
    figures.append(("Training curves", os.path.basename(curves)))
    if config.ccp:
        radius = os.path.join(config.output_dir, "covering_radius.png")
        report_lib.plot_covering_radius(logs, radius)
        figures.append(("Covering radius per CCP problem instance", os.path.basename(radius)))
    if config.tsne_points > 0:
        stored = np.load(os.path.join(repeat_dir, f"fold_{records[0]['fold']}", "test_embeddings.npz"))
        tsne = os.path.join(config.output_dir, "tsne.png")
        report_lib.plot_tsne(
            stored["query"], stored["query_labels"], tsne,
            proxies=stored["proxies"] if "proxies" in stored else None,
            proxy_labels=stored["proxy_labels"] if "proxy_labels" in stored else None,
            max_points=config.tsne_points, seed=config.seed,
        )
        figures.append(("t-SNE of test embeddings (fold 0 model)", os.path.basename(tsne)))
    notes = [f"Configuration: `{os.path.join(config.output_dir, 'config.json')}`."]
    return report_lib.write_report(
        config.output_dir, f"{results['method']} on {results['dataset']}", results["table"],
        figures, notes,
    )
