"""The benchmark protocol end to end (SPEC §6): fold models, test metrics, ensemble, export.

Layout of ``output_dir`` (see ``experiments/run_folder.py`` for the lifecycle)::

  run.lock                     held while a process works in the folder
  config.json                  the configuration, by group (a resumed run must match it)
  repeat_R/fold_K/             checkpoints/, logs/ (events.jsonl, TensorBoard),
                               model.weights.h5, test_embeddings.npz, fold_result.json
  export/fold_K, export/ensemble   SavedModel embedders (last repeat), each written when ready
  results.json, results.md     per-fold metrics, their average, the concatenation
  report.md, *.png             plots
  COMPLETE                     written last
"""
import os
import shutil
import time
import zipfile

import numpy as np
from absl import logging

import ccp
import data_pipelines
from experiments import builders
from experiments import config as config_lib
from experiments import covering
from experiments import ensembles
from experiments import fold_training
from experiments import report as report_lib
from experiments import results as results_lib
from experiments import run_folder
from experiments.results import Embedded, FoldResult

WEIGHTS_FILE = "model.weights.h5"
EXPORT_DIR = "export"


class EvaluationSets:
    """Query set and reference set (None = the query set itself) of the test split."""

    def __init__(self, splits):
        if splits.query is not None and splits.gallery is not None:
            self.query, self.reference = splits.query, splits.gallery
        else:
            self.query, self.reference = splits.test, None


def check_data(config, splits):
    """Flag/data conflicts, found before anything is written; returns the class folds."""
    num_classes, num_folds = splits.train.num_classes, config.protocol.folds
    if num_folds > num_classes:
        raise config_lib.ConfigError(
            f"--folds={num_folds} needs at least one training class per fold; "
            f"{config.data.dataset} has {num_classes} training classes")
    if config.protocol.validation_classes:
        folds = [held_out_fold(config, splits.train)]
    else:
        folds = data_pipelines.class_folds(splits.train, num_folds=num_folds)
        if num_folds == 1 and not config.protocol.select_on_test:
            logging.warning("--folds=1 without a validation split: the model trains exactly "
                            "--max_epochs=%d epochs, no early stopping",
                            config.protocol.max_epochs)
    smallest = min(fold.train.num_classes for fold in folds)
    if config.data.classes_per_batch > smallest:
        raise config_lib.ConfigError(
            f"--classes_per_batch={config.data.classes_per_batch} exceeds the {smallest} "
            f"training classes of the smallest fold of {config.data.dataset}")
    return folds


def held_out_fold(config, train):
    """--folds=1 --validation_classes=F: one model trains on the first classes of ``train`` and
    validates on the last ``round(F * C)`` (at least 1) classes, contiguous as the class folds."""
    classes = train.classes
    num_val = max(1, int(round(config.protocol.validation_classes * len(classes))))
    if num_val >= len(classes):
        raise config_lib.ConfigError(
            f"--validation_classes={config.protocol.validation_classes} leaves no training class "
            f"of the {len(classes)} of {config.data.dataset}")
    return data_pipelines.Fold(index=0, train=train.subset_classes(classes[:-num_val]),
                               val=train.subset_classes(classes[-num_val:]))


def check_weights(config):
    """Pretrained weights load (file present, readable, matching the model) before any write."""
    if config.model.weights in ("none", ""):
        return
    try:
        builders.build_model(config, name="weights_check")
    except (OSError, RuntimeError, ValueError) as error:  # the library names file and remedy
        raise config_lib.ConfigError(f"--weights={config.model.weights}: {error}") from error


def test_metrics(config, query, reference=None):
    """Retrieval metrics (+ NMI) of query embeddings against the reference set (Embedded)."""
    ref_emb, ref_lab = ((reference.embeddings, reference.labels) if reference is not None
                        else (None, None))
    if config.protocol.eval_pca_dim:  # fitted on the reference set (the queries when none)
        mean, components = ccp.metrics.pca_fit(
            query.embeddings if ref_emb is None else ref_emb, config.protocol.eval_pca_dim)
        query = Embedded(ccp.metrics.pca_transform(query.embeddings, mean, components)
                         .astype(np.float32), query.labels)
        if ref_emb is not None:
            ref_emb = ccp.metrics.pca_transform(ref_emb, mean, components).astype(
                np.float32)
            reference = Embedded(ref_emb, ref_lab)
    metrics = ccp.metrics.retrieval_metrics(
        query.embeddings, query.labels, ref_embeddings=ref_emb, ref_labels=ref_lab,
        recall_at=config.protocol.recall_at)
    if config.protocol.eval_at_k:  # the reference's AllAtK lists, flat: allatk_map_at_4, ...
        normalize = ccp.metrics.lipschitz_normalize  # the embeddings the other metrics rank
        lists = ccp.metrics.all_at_k(
            normalize(np.asarray(query.embeddings, np.float32)), query.labels,
            config.protocol.eval_at_k,
            None if ref_emb is None else normalize(np.asarray(ref_emb, np.float32)), ref_lab)
        for name in ("map", "precision", "recall"):
            metrics.update({f"allatk_{name}_at_{k}": v
                            for k, v in zip(lists["k"], lists[f"{name}_at_k"])})
    if config.protocol.compute_nmi:
        parts = [query] + ([reference] if reference is not None else [])
        metrics["nmi"] = ccp.metrics.nmi(np.concatenate([p.embeddings for p in parts]),
                                         np.concatenate([p.labels for p in parts]),
                                         seed=config.protocol.seed)
    return {k: float(v) for k, v in metrics.items()}


def embed(config, model, records):
    embeddings, labels = ccp.training.embed_dataset(model, builders.eval_dataset(config, records))
    return Embedded(embeddings, labels)


def _proxies(loss):
    proxies = getattr(loss, "proxies", None)
    if proxies is None:
        return None
    return Embedded(np.asarray(proxies.numpy()), np.asarray(loss.proxy_labels))


def _train_sample(config, model, fold, seed, proxies):
    """Training-class embeddings (class indices of the proxy bank) for the report's proxy plot:
    a fixed subsample of ``--tsne_points`` training images; None without proxies or report."""
    if proxies is None or not config.run.report or config.run.tsne_points <= 0:
        return None
    sample = embed(config, model, covering.training_sample(fold.train, config.run.tsne_points,
                                                           seed))
    return Embedded(sample.embeddings, np.searchsorted(fold.train.classes, sample.labels))


def run_fold(config, fold, fold_dir, repeat, seed, strategy, eval_sets):
    """Trains one fold (or reloads a finished one); returns ``(FoldResult, model or None)``."""
    if FoldResult.exists(fold_dir):
        try:
            result = FoldResult.load(fold_dir, repeat)
            logging.info("fold %s already finished in %s: not retrained", fold.index, fold_dir)
            return result, None
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
            # Its checkpoint holds the trained fold: training resumes at its end (no epoch is
            # trained again) and the fold is evaluated again.
            logging.warning("the stored result of fold %s in %s is damaged (%s: %s): evaluating "
                            "the fold again from its last checkpoint", fold.index, fold_dir,
                            type(error).__name__, error)
            os.remove(os.path.join(fold_dir, results_lib.RESULT_FILE))
    os.makedirs(fold_dir, exist_ok=True)
    started = time.time()
    builders.seed_everything(seed)  # the fold's weights do not depend on earlier folds
    model, loss, training = fold_training.train_fold(config, fold, fold_dir, seed, strategy,
                                                     test_sets=eval_sets)
    model.save_weights(os.path.join(fold_dir, WEIGHTS_FILE))
    query = embed(config, model, eval_sets.query)
    reference = (embed(config, model, eval_sets.reference)
                 if eval_sets.reference is not None else None)
    proxies = _proxies(loss)
    result = FoldResult(
        repeat=repeat, fold=fold.index, train_classes=int(fold.train.num_classes),
        val_classes=int(fold.val.num_classes) if fold.val is not None else 0,
        test_metrics=test_metrics(config, query, reference),
        training=results_lib.json_safe(training), seconds=time.time() - started,
        query=query, reference=reference, proxies=proxies,
        train_sample=_train_sample(config, model, fold, seed, proxies))
    result.save(fold_dir)
    logging.info("fold %s: test MAP@R %.4f", fold.index, result.test_metrics["map_at_r"])
    return result, model


def ensemble_metrics(config, fold_results):
    """Metrics of the concatenation of the folds' normalized embeddings (the 512D model)."""
    def concat(parts):
        return Embedded(np.concatenate([ccp.metrics.lipschitz_normalize(p.embeddings)
                                        for p in parts], axis=1), parts[0].labels)

    reference = None
    if fold_results[0].reference is not None:
        reference = concat([r.reference for r in fold_results])
    return test_metrics(config, concat([r.query for r in fold_results]), reference)


def export_once(models, export_dir, replace=False):
    """Exports a SavedModel embedder unless ``export_dir`` already holds a finished one (or
    ``replace``). Written to ``export_dir.partial`` and renamed, so a killed export leaves no
    folder that looks finished. Returns whether it exported.
    """
    if not replace and os.path.exists(os.path.join(export_dir, "saved_model.pb")):
        return False
    partial = export_dir + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    ccp.export.export_embedder(models, partial)
    shutil.rmtree(export_dir, ignore_errors=True)
    os.replace(partial, export_dir)
    return True


class FoldModels:
    """The last repeat's fold models, built from their weight files only when an export needs
    them (a resumed run whose exports exist loads nothing).

    Attributes:
      trained: indices of the folds trained by this process (their exports are rewritten).
    """

    def __init__(self, config, repeat_dir):
        self.config, self.repeat_dir, self.models, self.trained = config, repeat_dir, {}, set()

    def add(self, index, model):
        if model is not None:
            self.models[index] = model
            self.trained.add(index)

    def get(self, index):
        if index not in self.models:
            model = builders.build_model(self.config, name=f"fold_{index}")
            ccp.models.load_embedding_weights(
                model, os.path.join(self.repeat_dir, f"fold_{index}", WEIGHTS_FILE))
            self.models[index] = model
        return self.models[index]


def _export_dir(config, name):
    return os.path.join(config.run.output_dir, EXPORT_DIR, name)


def run_repeat(config, repeat, folds, strategy, eval_sets):
    """Trains the folds of one repeat; each of the last repeat's fold models is exported as
    soon as it is trained. Returns ``(fold results, FoldModels or None)``."""
    repeat_dir = os.path.join(config.run.output_dir, f"repeat_{repeat}")
    exporting = config.run.export and repeat == config.protocol.repeats - 1
    models = FoldModels(config, repeat_dir) if exporting else None
    fold_results = []
    for fold in folds:
        seed = config.protocol.seed + repeat + 1000 * fold.index
        result, model = run_fold(config, fold, os.path.join(repeat_dir, f"fold_{fold.index}"),
                                 repeat, seed, strategy, eval_sets)
        fold_results.append(result)
        if exporting:
            models.add(fold.index, model)
            path = _export_dir(config, f"fold_{fold.index}")
            if model is not None or not os.path.exists(os.path.join(path, "saved_model.pb")):
                export_once(models.get(fold.index), path, replace=model is not None)
    return fold_results, models


def export_ensemble(config, folds, models):
    """The concatenation of the last repeat's fold models (skipped when it exists and no fold
    was retrained)."""
    if models is None or len(folds) < 2:
        return
    export_once([models.get(fold.index) for fold in folds], _export_dir(config, "ensemble"),
                replace=bool(models.trained))


def prepare(config):
    """Everything checkable before the output folder is touched: data, folds, weights."""
    try:
        splits = builders.load_splits(config)
    except (ValueError, OSError) as error:  # the loaders' layout, count and image errors
        raise config_lib.DataError(f"--dataset={config.data.dataset}: {error}") from error
    folds = check_data(config, splits)
    check_weights(config)
    return EvaluationSets(splits), folds


def completion_artifacts(config, folds):
    """The files whose presence ``COMPLETE`` vouches for (relative to the output folder)."""
    artifacts = ["config.json", "results.json", "results.md"]
    for repeat in range(config.protocol.repeats):
        for fold in folds:
            fold_dir = os.path.join(f"repeat_{repeat}", f"fold_{fold.index}")
            artifacts += [os.path.join(fold_dir, f) for f in
                          (results_lib.RESULT_FILE, results_lib.EMBEDDINGS_FILE, WEIGHTS_FILE)]
    if config.run.export:
        artifacts += [os.path.join(EXPORT_DIR, f"fold_{f.index}", "saved_model.pb") for f in folds]
        if len(folds) > 1:
            artifacts.append(os.path.join(EXPORT_DIR, "ensemble", "saved_model.pb"))
    if config.run.report:
        artifacts.append("report.md")
    return artifacts


def add_repeat_ensembles(config, results, per_repeat, concatenated):
    """With --repeats > 1: the fold average over all fold models and the metrics of every
    one-model-per-fold ensemble (``repeats^folds``, from the stored test embeddings; NMI only
    for the first repeat's ensemble) in ``results`` and its table."""
    repeats, num_folds = config.protocol.repeats, config.protocol.folds
    if repeats < 2:
        return
    models = [r.test_metrics for fold_results in per_repeat for r in fold_results]
    results["all_models_average"] = {n: results_lib.summarize([m[n] for m in models])
                                     for n in models[0]}
    if num_folds < 2:
        return
    plain = config.replace(compute_nmi=False)
    evaluated = ensembles.evaluate_combinations(
        per_repeat, lambda query, reference: test_metrics(plain, query, reference))
    summary = ensembles.summarize_ensembles(evaluated, concatenated[0])
    results["ensembles"] = summary
    results["table"] += "\n\n" + ensembles.ensembles_table(
        summary, config.model.embedding_size, num_folds, repeats)
    logging.info("%d ensembles: MAP@R %.4f +- %.4f (worst %.4f, best %.4f)", summary["count"],
                 summary["metrics"]["map_at_r"]["mean"], summary["metrics"]["map_at_r"]["std"],
                 summary["worst"]["metrics"]["map_at_r"], summary["best"]["metrics"]["map_at_r"])


def train_and_report(config, folds, eval_sets):
    """All repeats and folds, exports, results.json and the report; returns the results."""
    builders.set_precision(config)
    builders.set_determinism(config)
    strategy = builders.build_strategy(config)
    per_repeat, concatenated, models = [], [], None
    for repeat in range(config.protocol.repeats):
        fold_results, repeat_models = run_repeat(config, repeat, folds, strategy, eval_sets)
        models = repeat_models or models
        per_repeat.append(fold_results)
        concatenated.append(ensemble_metrics(config, fold_results)
                            if config.protocol.folds > 1 else None)
    export_ensemble(config, folds, models)
    results = results_lib.aggregate(config, per_repeat, concatenated)
    add_repeat_ensembles(config, results, per_repeat, concatenated)
    if config.protocol.select_on_test:
        results["model_selection"] = (f"{config.protocol.monitor} of the test split (the "
                                      "reference's conventional protocol)")
        results["table"] += f"\n\nModel selected on the test split: {results['model_selection']}."
    output_dir = config.run.output_dir
    run_folder.write_json(os.path.join(output_dir, "results.json"), results)
    with open(os.path.join(output_dir, "results.md"), "w") as handle:
        handle.write(results["table"] + "\n")
    if config.run.report:
        report_lib.write_experiment_report(config, results, per_repeat[-1])
    return results


def run(config):
    """Runs the whole protocol; returns the results dict (also written to results.json).

    Checks the output folder (writable) and the data first and writes nothing before that;
    holds the folder's lock while it works; a complete folder is left as it is (its stored
    results are returned). A folder whose run has other settings is refused, unless none of its
    folds finished: that run is then set aside (``config.prev.json``, ``previous_run/``).
    """
    output_dir = config.run.output_dir
    run_folder.check_output_dir(output_dir)  # first: a wrong path fails before the data check
    eval_sets, folds = prepare(config)
    os.makedirs(output_dir, exist_ok=True)
    with run_folder.RunLock(output_dir):
        changed = run_folder.check_config(config.to_dict(), output_dir,
                                          config_lib.ExperimentConfig().to_dict(),
                                          allow_restart=True)
        if changed:  # no fold of the stored run finished: it is set aside, not resumed
            run_folder.restart(output_dir, changed)
        if run_folder.completed(output_dir):
            path = os.path.join(output_dir, "results.json")
            try:
                results = run_folder.read_json(path)
                logging.info("%s is complete: nothing to do", output_dir)
                results["already_complete"] = True
                return results
            except (ValueError, UnicodeDecodeError) as error:  # finished folds are reused
                logging.warning("%s is damaged (%s): writing it again from the stored folds",
                                path, error)
        run_folder.mark_incomplete(output_dir)
        run_folder.store_config(config.to_dict(), output_dir)
        results = train_and_report(config, folds, eval_sets)
        run_folder.mark_complete(output_dir, completion_artifacts(config, folds))
    return results
