"""Learning quality on `glyphs`: C2, C2-CCP, MS, MS-CCP and ProxyAnchor, same budget, 3 seeds.

  .venv/bin/python benchmarks/learning_quality.py --output_dir=runs/learning_quality

Every method trains the same backbone (small_cnn, 128D, 32x32 glyph images) with the same
optimizer, batch size (32) and step budget: those of ``experiments/configs/glyphs.cfg`` (2 class
folds of the 202 training classes, 8 x 25 steps per fold model; test on the 203 unseen classes),
once per seed (``--repeats``: seeds 0, 1, 2), through the experiment runner
(``experiments/run.py``, one subprocess per method; its ``results.json`` is read back). The
methods differ only in the loss. Printed per method: test MAP@R, R-precision and P@1 of the 128D
fold models (fold average) and of their concatenation, mean +- std over the seeds.

For the CCP runs it also prints the covering radius of each class's *training* embeddings by the
class's proxies (max over the class's training images of the distance to the nearest own-class
proxy, Lipschitz-normalized as in the loss) for the proxies held at the end of training, next to
the covering radius of the projection *pool* that the runner logs at every projection. Last, a
sweep of C2-CCP over K = 1, 2, 4, 8 proxies per class (``--sweep_repeats`` seeds).

Times: wall seconds and the CPU seconds of each runner process (the machine may be shared).
"""
import functools
import json
import os
import pathlib
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
RUNNER = REPO / "experiments" / "run.py"

flags.DEFINE_string("output_dir", "runs/learning_quality", "Folder of the runs (resumable).")
flags.DEFINE_integer("repeats", 3, "Seeds per method (0, 1, ...).")
flags.DEFINE_integer("sweep_repeats", 1, "Seeds per K of the C2-CCP sweep.")
flags.DEFINE_list("methods", ["C2", "C2-CCP", "MS", "MS-CCP", "ProxyAnchor"], "Methods to run.")
flags.DEFINE_list("k_sweep", ["1", "2", "4", "8"], "K values of the C2-CCP sweep (empty: none).")
flags.DEFINE_list("runner_flags", [], "Extra runner flags for every run, e.g. folds=4 or "
                  "max_epochs=12 (without the leading --; they override the flagfile).")
flags.DEFINE_integer("jobs", 2, "Runner processes at a time (a runner keeps about one core "
                     "busy on this small CNN: 2 fill a 2-core machine).")
flags.DEFINE_bool("summarize_only", False, "Run nothing: print the tables of the seeds whose "
                  "fold models all finished in --output_dir (an interrupted or running benchmark).")
FLAGS = flags.FLAGS

# One flagfile holds the data, backbone, optimizer, batch and step budget of every run (and the
# C2 and CCP settings); the methods only change the loss.
FLAGFILE = REPO / "experiments" / "configs" / "glyphs.cfg"
COMMON = (f"--flagfile={FLAGFILE}", "--noccp", "--noexport", "--noreport", "--nocompute_nmi",
          "--noprogress_bar")
MS = ("--loss=multi_similarity", "--ms_alpha=2.0", "--ms_beta=40.0", "--ms_base=0.5")
METHODS = {
    "C2": (),
    "C2-CCP": ("--ccp",),
    "MS": MS,
    "MS-CCP": MS + ("--ccp",),
    # SPEC §4: proxy baselines take 1 image per class per batch (same batch size, 32), 1 warm-up
    # epoch and a faster proxy learning rate (10 x 1e-3 = 1e-2, ProxyAnchor's own proxy rate).
    "ProxyAnchor": ("--loss=proxy_anchor", "--classes_per_batch=32", "--samples_per_class=1",
                    "--proxy_anchor_margin=0.1", "--proxy_anchor_alpha=32",
                    "--proxy_lr_multiplier=10", "--warmup_epochs=1"),
}
METRICS = (("map_at_r", "MAP@R"), ("r_precision", "R-precision"), ("precision_at_1", "P@1"))


def flagfile_value(name):
    """The value of --name in the flagfile (str), or None."""
    for line in FLAGFILE.read_text().splitlines():
        if line.startswith(f"--{name}="):
            return line.split("=", 1)[1]
    return None


def run_method(name, method_flags, output_dir, repeats):
    """Runs experiments/run.py for one method; returns (results dict, wall s, CPU s)."""
    command = [sys.executable, str(RUNNER), *COMMON, *method_flags,
               *(f"--{flag}" for flag in FLAGS.runner_flags),
               f"--repeats={repeats}", f"--output_dir={output_dir}"]
    os.makedirs(output_dir, exist_ok=True)
    started = time.time()
    with open(os.path.join(output_dir, "runner.log"), "a") as log:
        log.write(" ".join(command) + "\n")
        log.flush()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        _, status, usage = os.wait4(process.pid, 0)  # this child's own CPU time
    if os.waitstatus_to_exitcode(status):
        raise RuntimeError(f"{name}: experiments/run.py failed (exit "
                           f"{os.waitstatus_to_exitcode(status)}); "
                           f"see {os.path.join(output_dir, 'runner.log')}")
    with open(os.path.join(output_dir, "results.json")) as handle:
        results = json.load(handle)
    return results, time.time() - started, usage.ru_utime + usage.ru_stime


def pool_radius_per_projection(run_dir, repeats, folds):
    """Mean over folds and repeats of the logged pool covering radius, per projection index.

    Returns:
      list of (instance, mean radius after the k-center picks, number of folds that reached it).
    """
    by_instance = {}
    for repeat in range(repeats):
        for fold in range(folds):
            path = os.path.join(run_dir, f"repeat_{repeat}", f"fold_{fold}", "logs",
                                "events.jsonl")
            if not os.path.exists(path):
                continue
            with open(path) as handle:
                for line in handle:
                    event = json.loads(line)
                    if event.get("event") in ("proxy_init", "projection") and \
                            "radius_after" in event:
                        by_instance.setdefault(int(event.get("instance", 0)), []).append(
                            float(event["radius_after"]))
    return [(k, float(np.mean(v)), len(v)) for k, v in sorted(by_instance.items())]


def run_setting(run_dir, name):
    """The value of flag `name` in a run's config.json (groups of flags), or None."""
    with open(os.path.join(run_dir, "config.json")) as handle:
        stored = json.load(handle)
    groups = [v for v in stored.values() if isinstance(v, dict)] + [stored]
    return next((group[name] for group in groups if name in group), None)


def training_covering_radius(run_dir, repeats, folds):
    """Per (repeat, fold): covering radius of each training class by its final proxies.

    Embeds the fold's training images (evaluation transform) with the fold's saved model and
    reads the proxies the runner stored with the test embeddings. Distances are between
    Lipschitz-normalized vectors (as in the loss, SPEC §2).

    Returns:
      list of float [C_fold] radii, one array per fold model (repeat-major).
    """
    import ccp
    import data_pipelines

    setting = functools.partial(run_setting, run_dir)
    image_size = setting("image_size") or 32
    splits = data_pipelines.load("glyphs", image_size=image_size)
    fold_records = data_pipelines.class_folds(splits.train, num_folds=folds)
    rows = []
    for repeat in range(repeats):
        for fold in range(folds):
            fold_dir = os.path.join(run_dir, f"repeat_{repeat}", f"fold_{fold}")
            model = ccp.models.build_embedding_model(
                backbone=setting("backbone"), embedding_size=setting("embedding_size"),
                pooling=setting("pooling"), embedding_bias=bool(setting("embedding_bias")),
                image_size=image_size, weights=None)
            ccp.models.load_embedding_weights(model, os.path.join(fold_dir, "model.weights.h5"))
            stored = np.load(os.path.join(fold_dir, "test_embeddings.npz"))
            records = fold_records[fold].train
            dataset = data_pipelines.eval_dataset(records, batch_size=256, image_size=image_size)
            embeddings = ccp.metrics.lipschitz_normalize(model.predict(dataset, verbose=0))
            proxies = ccp.metrics.lipschitz_normalize(stored["proxies"])
            # proxy_labels are class indices 0..C-1 of the fold's sorted training classes
            class_index = records.class_indices()
            radii = []
            for c in range(records.num_classes):
                own = proxies[stored["proxy_labels"] == c]
                points = embeddings[class_index == c]
                dists = np.sqrt(np.maximum(
                    (points ** 2).sum(1)[:, None] + (own ** 2).sum(1)[None, :]
                    - 2.0 * points @ own.T, 0.0))
                radii.append(dists.min(axis=1).max())
            rows.append(np.asarray(radii, np.float64))
    return rows


def finished_results(run_dir, repeats):
    """A results.json-like dict of the seeds of `run_dir` whose fold models all finished.

    Reads each fold's fold_result.json (test metrics) and test_embeddings.npz (for the
    concatenation of the fold models' Lipschitz-normalized embeddings). Returns None when no seed
    is complete.
    """
    import ccp

    folds, dims = run_setting(run_dir, "folds"), run_setting(run_dir, "embedding_size")
    per_seed_avg, per_seed_concat = [], []
    for repeat in range(repeats):
        fold_dirs = [os.path.join(run_dir, f"repeat_{repeat}", f"fold_{k}") for k in range(folds)]
        if not all(os.path.exists(os.path.join(d, "fold_result.json")) for d in fold_dirs):
            continue
        metrics = []
        for d in fold_dirs:
            with open(os.path.join(d, "fold_result.json")) as handle:
                metrics.append(json.load(handle)["test_metrics"])
        stored = [np.load(os.path.join(d, "test_embeddings.npz")) for d in fold_dirs]
        concat = np.concatenate([ccp.metrics.lipschitz_normalize(z["query"]) for z in stored], 1)
        per_seed_concat.append(ccp.metrics.retrieval_metrics(concat, stored[0]["query_labels"]))
        per_seed_avg.append({key: np.mean([m[key] for m in metrics]) for key, _ in METRICS})
        if len(per_seed_avg) == 1:
            first_seed_folds = [{key: m[key] for key, _ in METRICS} for m in metrics]
    if not per_seed_avg:
        return None

    def summary(values):
        return {"mean": float(np.mean(values)), "std": float(np.std(values)),
                "values": [float(v) for v in values]}

    # Like the runner: std over seeds, over the folds of the one seed when only one finished.
    source = per_seed_avg if len(per_seed_avg) > 1 else first_seed_folds
    return {"folds": folds, "embedding_size": dims, "seeds": len(per_seed_avg),
            "average": {key: summary([s[key] for s in source]) for key, _ in METRICS},
            "concatenated": {key: summary([float(s[key]) for s in per_seed_concat])
                             for key, _ in METRICS}}


def summarize_only(run_dirs):
    """Prints the quality table of whatever finished in each method's folder."""
    rows, ccp_rows = [], []
    for name, run_dir in run_dirs.items():
        if not os.path.exists(os.path.join(run_dir, "config.json")):
            continue
        results = finished_results(run_dir, FLAGS.repeats)
        if results is None:
            print(f"{name}: no seed finished yet in {run_dir}")
            continue
        rows.append((f"{name} ({results['seeds']} seed{'s' if results['seeds'] > 1 else ''})",
                     results, float("nan"), float("nan")))
        if "--ccp" in METHODS.get(name, ("--ccp",)):
            ccp_rows.append(radius_lines(name, run_dir, results["seeds"], results["folds"]))
    if rows:
        concat = rows[0][1]["embedding_size"] * rows[0][1]["folds"]
        print("\nFinished seeds only; ± over seeds, over folds when 1 seed; test metrics in %:\n")
        print(quality_table(rows, concat))
    for line in ccp_rows:
        print("- " + line)


def _cell(summary, scale=100.0):
    return f"{scale * summary['mean']:.2f} ± {scale * summary['std']:.2f}"


def quality_table(rows, concat_dims):
    """Markdown table of (method, results, wall, cpu) rows."""
    head = "| method | " + " | ".join(
        f"{title} avg | {title} {concat_dims}D concat" for _, title in METRICS
    ) + " | wall s | CPU s |"
    lines = [head, "|---|" + "---|---|" * len(METRICS) + "---|---|"]
    for name, results, wall, cpu in rows:
        cells = []
        for key, _ in METRICS:
            cells += [_cell(results["average"][key]), _cell(results["concatenated"][key])]
        times = " | ".join("-" if np.isnan(t) else f"{t:.0f}" for t in (wall, cpu))
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {times} |")
    return "\n".join(lines)


def radius_lines(name, run_dir, repeats, folds):
    radii = training_covering_radius(run_dir, repeats, folds)
    per_fold_mean = np.asarray([r.mean() for r in radii])
    per_fold_max = np.asarray([r.max() for r in radii])
    pool = pool_radius_per_projection(run_dir, repeats, folds)
    pool_text = ", ".join(f"t={k}: {r:.3f} ({n} folds)" for k, r, n in pool)
    return (f"{name}: training covering radius by the final proxies, mean over classes "
            f"{per_fold_mean.mean():.3f} ± {per_fold_mean.std():.3f} (over fold models), "
            f"max over classes {per_fold_max.mean():.3f}; pool covering radius after each "
            f"projection (t = 0 is the initialization): {pool_text}")


def sweep_row(k, results, wall, cpu, run_dir, repeats):
    """One K-sweep row from a runner result (its first `repeats` seeds)."""
    folds = [f for f in results["per_fold"] if f["repeat"] < repeats]

    def over(values):
        return {"mean": float(np.mean(values)), "std": float(np.std(values))}

    def by_seed(key):
        if repeats > 1:  # fold average per seed, then mean / std over seeds
            return [np.mean([f["metrics"][key] for f in folds if f["repeat"] == r])
                    for r in range(repeats)]
        return [f["metrics"][key] for f in folds]  # one seed: mean / std over its folds

    radius = np.mean([r.mean() for r in training_covering_radius(run_dir, repeats,
                                                                  results["folds"])])
    return {"k": k, "map_at_r": over(by_seed("map_at_r")),
            "precision_at_1": over(by_seed("precision_at_1")),
            "concat_map_at_r": float(np.mean(
                results["concatenated"]["map_at_r"]["values"][:repeats])),
            "radius": float(radius), "wall": wall, "cpu": cpu}


def main(argv):
    del argv
    import concurrent.futures

    unknown = [m for m in FLAGS.methods if m not in METHODS]
    if unknown:
        raise app.UsageError(f"--methods: unknown {unknown}; valid: {sorted(METHODS)}")
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    total_start = time.time()
    default_k = int(flagfile_value("ccp_proxies_per_class"))
    if FLAGS.summarize_only:
        dirs = {name: os.path.join(FLAGS.output_dir, name.lower().replace("-", "_"))
                for name in FLAGS.methods}
        dirs.update({f"C2-CCP K={k}": os.path.join(FLAGS.output_dir, f"c2_ccp_k{k}")
                     for k in (int(v) for v in FLAGS.k_sweep) if k != default_k})
        summarize_only(dirs)
        return
    jobs = {}
    for name in FLAGS.methods:
        jobs[name] = (METHODS[name], os.path.join(FLAGS.output_dir, name.lower().replace("-", "_")),
                      FLAGS.repeats)
    sweep_ks = [int(v) for v in FLAGS.k_sweep]
    reuse_main = "C2-CCP" in jobs and FLAGS.sweep_repeats <= FLAGS.repeats
    for k in sweep_ks:
        if k == default_k and reuse_main:
            continue  # the main C2-CCP run's first seed(s) are this K's runs
        jobs[f"C2-CCP K={k}"] = (("--ccp", f"--ccp_proxies_per_class={k}"),
                                 os.path.join(FLAGS.output_dir, f"c2_ccp_k{k}"),
                                 FLAGS.sweep_repeats)
    done = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, FLAGS.jobs)) as pool:
        futures = {pool.submit(run_method, name, *args): name for name, args in jobs.items()}
        for future in concurrent.futures.as_completed(futures):
            name = futures[future]
            done[name] = future.result()
            results, wall, cpu = done[name]
            print(f"{name}: MAP@R {_cell(results['average']['map_at_r'])} "
                  f"(wall {wall:.0f} s, CPU {cpu:.0f} s)", flush=True)

    rows = [(name, *done[name]) for name in FLAGS.methods]
    radius_text = [radius_lines(name, jobs[name][1], FLAGS.repeats, done[name][0]["folds"])
                   for name in FLAGS.methods if "--ccp" in METHODS[name]]
    sweep_rows = []
    for k in sweep_ks:
        name = "C2-CCP" if k == default_k and reuse_main else f"C2-CCP K={k}"
        results, wall, cpu = done[name]
        sweep_rows.append(sweep_row(k, results, wall, cpu, jobs[name][1], FLAGS.sweep_repeats))

    first = rows[0][1] if rows else done[next(iter(done))][0]
    folds, dims = first["folds"], first["embedding_size"]
    concat = dims * folds
    overrides = dict(flag.split("=", 1) for flag in FLAGS.runner_flags if "=" in flag)
    budget = (f"{overrides.get('max_epochs', flagfile_value('max_epochs'))} epochs x "
              f"{overrides.get('steps_per_epoch', flagfile_value('steps_per_epoch'))} steps")
    extra = f" ({' '.join(FLAGS.runner_flags)})" if FLAGS.runner_flags else ""
    print(f"\nglyphs (202 training / 203 unseen test classes), small_cnn {dims}D, "
          f"{FLAGFILE.relative_to(REPO)}, {budget} per fold model{extra}, {folds} class "
          f"folds, {FLAGS.repeats} seeds; test metrics in %, mean ± std over seeds "
          f"({concat}D = concatenation of the fold models):\n")
    print(quality_table(rows, concat))
    if radius_text:
        print("\nCovering radius (Lipschitz-normalized space):")
        for line in radius_text:
            print("- " + line)
    if sweep_rows:
        print(f"\nC2-CCP, K proxies per class ({FLAGS.sweep_repeats} seed(s); ± over seeds, "
              f"over folds when 1 seed; K = {default_k} is the main run's first seed(s)):\n")
        print(f"| K | MAP@R {dims}D avg | MAP@R {concat}D concat | P@1 {dims}D avg | "
              "training covering radius | wall s | CPU s |")
        print("|---|---|---|---|---|---|---|")
        for row in sweep_rows:
            print(f"| {row['k']} | {_cell(row['map_at_r'])} | {100 * row['concat_map_at_r']:.2f} | "
                  f"{_cell(row['precision_at_1'])} | {row['radius']:.3f} | {row['wall']:.0f} | "
                  f"{row['cpu']:.0f} |")
    total_cpu = sum(cpu for _, _, cpu in done.values())
    print(f"\ntotal wall time {time.time() - total_start:.0f} s, runner CPU time {total_cpu:.0f} s "
          f"({FLAGS.jobs} job(s) at a time; the machine may be shared: see the CPU seconds)")


if __name__ == "__main__":
    app.run(main)
