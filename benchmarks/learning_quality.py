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
flags.DEFINE_enum("regime", "scratch", ["scratch", "pretrained"],
                  "scratch: the tables above (from-scratch small CNN, glyphs.cfg's budget). "
                  "pretrained: the paper's regime (fine-tuning the symbols-pretrained backbone; "
                  "learning rates chosen on validation; C2/MS vs their CCP versions, paired by "
                  "seed; CCP's knobs; the same budget from scratch), see pretrained_study().")
flags.DEFINE_list("lr_grid", ["1e-4", "3e-4", "1e-3", "3e-3", "1e-2"], "--regime=pretrained: "
                  "learning rates of the validation grid (seed 0; every method the same grid).")
flags.DEFINE_integer("seeds", 3, "--regime=pretrained: seeds of the main comparison.")
flags.DEFINE_integer("scratch_seeds", 2, "--regime=pretrained: seeds of the same budget "
                     "trained from scratch (glyphs.cfg's rate 1e-3) and of the warm start.")
flags.DEFINE_bool("warm_start", True, "--regime=pretrained: also the two-stage runs (C2 on "
                  "all training classes first, then every method from that model).")
flags.DEFINE_integer("budget_epochs", 16, "--regime=pretrained: epochs of 25 steps per fold "
                     "model (no early stop before; the best validation epoch is restored).")
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
    finished = os.path.join(output_dir, "COMPLETE")
    logged = os.path.join(output_dir, "runner.log")
    if os.path.exists(finished) and os.path.exists(logged):
        with open(logged) as log:  # the same command finished before: read its results
            if log.readline().rstrip("\n") == " ".join(command):
                with open(os.path.join(output_dir, "results.json")) as handle:
                    results = json.load(handle)
                timing = os.path.join(output_dir, "timing.json")
                wall = cpu = float("nan")
                if os.path.exists(timing):
                    with open(timing) as handle:
                        wall, cpu = json.load(handle)
                return results, wall, cpu
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
    wall, cpu = time.time() - started, usage.ru_utime + usage.ru_stime
    with open(os.path.join(output_dir, "timing.json"), "w") as handle:
        json.dump([wall, cpu], handle)  # of the last invocation (a resumed run: its rest)
    return results, wall, cpu


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


# ---------------------------------------------------------------------------------------------
# The paper's regime (issue "Where CCP helps"): a backbone pretrained on classes the benchmark
# never shows (symbols_pretrained: experiments/pretraining.py), fine-tuned with a learning rate
# chosen on validation, validation MAP@R driving the CCP schedule (patience 3 epochs).
PRETRAINED = ("--weights=symbols_pretrained", "--ccp_patience=3")
KNOBS = {  # C2-CCP variants at C2-CCP's chosen learning rate (the flagfile: K 4, b 8, 2e-4)
    "K=1": ("--ccp_proxies_per_class=1",), "K=2": ("--ccp_proxies_per_class=2",),
    "K=8, b=16": ("--ccp_proxies_per_class=8", "--ccp_pool_size=16"),
    "pool b=16": ("--ccp_pool_size=16",),
    "lambda=0": ("--ccp_lambda=0",), "lambda=2e-3 (10x)": ("--ccp_lambda=2e-3",),
    "pair weight 0": ("--ccp_pair_weight=0",), "pair weight 1": ("--ccp_pair_weight=1",),
    "CCP patience 1": ("--ccp_patience=1",),
    # not the paper's CCP (no multiplier there): lets the proxies move between projections
    "proxy lr x100": ("--proxy_lr_multiplier=100",),
}
SCRATCH_LR = "1e-3"  # glyphs.cfg's from-scratch rate
# The from-scratch rows and the warm start: C2 and C2-CCP only (the 200-step scratch table above
# has all five methods), so that the whole study fits in about 90 minutes on 2 cores.
SCRATCH_METHODS = WARM_METHODS = ("C2", "C2-CCP")


def _budget():
    epochs = FLAGS.budget_epochs
    return (f"--max_epochs={epochs}", f"--patience={epochs}")


def _seconds(value):
    """'-' for a time not measured by this invocation (a run read back from its folder)."""
    return "-" if np.isnan(value) else f"{value:.0f}"


def _slug(text):
    return "".join(c if c.isalnum() else "_" for c in text.lower()).strip("_")


def per_seed(results, key="map_at_r", seed_offset=0):
    """{seed: fold-average test metric} of a runner result (seed = --seed + repeat)."""
    by_repeat = {}
    for fold in results["per_fold"]:
        by_repeat.setdefault(fold["repeat"], []).append(fold["metrics"][key])
    return {seed_offset + r: float(np.mean(v)) for r, v in by_repeat.items()}


def validation_score(results):
    """Mean over fold models of the best validation MAP@R (what the grid selects on)."""
    return float(np.mean([f["best_validation_map_at_r"] for f in results["per_fold"]]))


def epoch_series(run_dir):
    """Per fold model, per epoch: validation MAP@R, normalized covering radius, nearest-proxy
    accuracy (CCP runs; the radius fields are None otherwise) and whether it projected."""
    series = []
    for fold_dir in sorted(pathlib.Path(run_dir).glob("repeat_*/fold_*")):
        events = fold_dir / "logs" / "events.jsonl"
        radius = fold_dir / "logs" / "covering_radius.jsonl"
        epochs = {}
        if events.exists():
            for line in events.read_text().splitlines():
                record = json.loads(line)
                if record.get("event") == "epoch" and "val_map_at_r" in record:
                    epochs[record["epoch"]] = {"val_map_at_r": record["val_map_at_r"]}
        if radius.exists():
            for line in radius.read_text().splitlines():
                record = json.loads(line)
                if record["point"] == "epoch" and record["epoch"] in epochs:
                    epochs[record["epoch"]].update(
                        {k: record.get(k) for k in ("normalized_mean", "nearest_proxy_accuracy",
                                                    "projection")})
                elif record["point"] == "final":
                    epochs["final"] = record
        series.append(epochs)
    return series


def final_geometry(run_dir):
    """Mean over fold models of the final (restored best) normalized covering radius and
    nearest-proxy accuracy; (nan, nan) without CCP."""
    finals = [s["final"] for s in epoch_series(run_dir) if "final" in s]
    if not finals or finals[0].get("normalized_mean") is None:
        return float("nan"), float("nan")
    return (float(np.mean([f["normalized_mean"] for f in finals])),
            float(np.mean([f["nearest_proxy_accuracy"] for f in finals])))


def initial_accuracy(run_dir):
    """Mean over fold models of the nearest-proxy accuracy after epoch 1 (first record)."""
    values = [s[1]["nearest_proxy_accuracy"] for s in epoch_series(run_dir)
              if 1 in s and s[1].get("nearest_proxy_accuracy") is not None]
    return float(np.mean(values)) if values else float("nan")


def projections(run_dir):
    count = 0
    for fold_dir in pathlib.Path(run_dir).glob("repeat_*/fold_*"):
        events = fold_dir / "logs" / "events.jsonl"
        if events.exists():
            count += sum(json.loads(line).get("event") == "projection"
                         for line in events.read_text().splitlines())
    return count


def pretrained_study(out):
    """Runs (resumably) and prints every table of the pretrained regime."""
    import concurrent.futures
    import scipy.stats

    methods = [m for m in FLAGS.methods if m in ("C2", "C2-CCP", "MS", "MS-CCP")]
    grid = [float(v) for v in FLAGS.lr_grid]
    started = time.time()
    cpu = {}

    def run(name, flags_, run_dir, repeats=1, seed=0):
        results, wall, cpu_s = run_method(name, (*flags_, f"--seed={seed}"), run_dir, repeats)
        cpu[run_dir] = cpu_s
        print(f"  done {name} ({wall:.0f} s wall, {cpu_s:.0f} CPU s)", flush=True)
        return results

    grid_jobs = {(m, lr): (m, (*METHODS[m], *PRETRAINED, *_budget(), f"--learning_rate={lr}"),
                           os.path.join(out, "grid", f"{_slug(m)}_lr{lr:g}"))
                 for m in methods for lr in grid}
    scratch_jobs = {m: (f"{m} scratch", (*METHODS[m], "--weights=none", *_budget(),
                                         f"--learning_rate={SCRATCH_LR}"),
                        os.path.join(out, "scratch", _slug(m)), FLAGS.scratch_seeds)
                    for m in methods if m in SCRATCH_METHODS}
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, FLAGS.jobs)) as pool:
        grid_futures = {key: pool.submit(run, f"{key[0]} lr={key[1]:g}", *job[1:])
                        for key, job in grid_jobs.items()}
        grid_results = {key: f.result() for key, f in grid_futures.items()}
        chosen = {m: max(grid, key=lambda lr: validation_score(grid_results[(m, lr)]))
                  for m in methods}
        more = FLAGS.seeds - 1
        main_futures = {m: pool.submit(
            run, f"{m} seeds 1..{more}", (*METHODS[m], *PRETRAINED, *_budget(),
                                          f"--learning_rate={chosen[m]}"),
            os.path.join(out, "main", _slug(m)), more, 1) for m in methods if more > 0}
        knob_futures = {}
        if "C2-CCP" in methods:
            knob_futures = {k: pool.submit(
                run, f"C2-CCP {k}", (*METHODS["C2-CCP"], *PRETRAINED, *_budget(),
                                     f"--learning_rate={chosen['C2-CCP']}", *v),
                os.path.join(out, "knobs", _slug(k))) for k, v in KNOBS.items()}
        scratch_futures = {m: pool.submit(run, *job) for m, job in scratch_jobs.items()}
        main_results = {m: f.result() for m, f in main_futures.items()}
        knob_results = {k: f.result() for k, f in knob_futures.items()}
        warm_results = {}
        if FLAGS.warm_start and "C2" in methods:
            # Stage 1: C2 fine-tunes the pretrained backbone on ALL 202 training classes (one
            # model, the same budget); stage 2 starts every method from that model (weights=
            # the whole embedding model file), 2 class folds as above. The validation classes
            # were seen in stage 1, so stage 2's selection is optimistic; the test classes
            # never were.
            stage1 = os.path.join(out, "warm", "stage1_c2")
            run("warm start stage 1 (C2, all training classes)",
                (*METHODS["C2"], *PRETRAINED, *_budget(), f"--learning_rate={chosen['C2']}",
                 "--folds=1"), stage1)
            start = os.path.join(stage1, "repeat_0", "fold_0", "model.weights.h5")
            warm_futures = {m: pool.submit(
                run, f"{m} from the stage-1 model", (*METHODS[m], f"--weights={start}",
                                                     "--ccp_patience=3", *_budget(),
                                                     f"--learning_rate={chosen[m]}"),
                os.path.join(out, "warm", _slug(m)), FLAGS.scratch_seeds)
                for m in methods if m in WARM_METHODS}
            warm_results = {m: f.result() for m, f in warm_futures.items()}
        scratch_results = {m: f.result() for m, f in scratch_futures.items()}

    def seeds_of(m):
        values = per_seed(grid_results[(m, chosen[m])])
        if m in main_results:
            values.update(per_seed(main_results[m], seed_offset=1))
        return values

    budget = f"{FLAGS.budget_epochs} epochs x 25 steps per fold model"
    print(f"\n## Pretrained regime: symbols_pretrained small_cnn fine-tuned on glyphs, {budget}, "
          f"2 class folds, seeds 0..{FLAGS.seeds - 1}\n")
    print("Learning-rate grid (seed 0): mean over the 2 fold models of the best VALIDATION "
          "MAP@R (held-out training classes), % ; chosen = highest:\n")
    print("| method | " + " | ".join(f"lr {lr:g}" for lr in grid) + " | chosen |")
    print("|---|" + "---|" * len(grid) + "---|")
    for m in methods:
        cells = [f"{100 * validation_score(grid_results[(m, lr)]):.2f}" for lr in grid]
        print(f"| {m} | " + " | ".join(cells) + f" | {chosen[m]:g} |")

    print("\nTest MAP@R (203 unseen classes), 128D fold average, % , per seed and mean ± std "
          "(population std over seeds):\n")
    table_seeds = sorted(seeds_of(methods[0]))
    print("| method | lr | " + " | ".join(f"seed {s}" for s in table_seeds) + " | mean ± std |")
    print("|---|---|" + "---|" * len(table_seeds) + "---|")
    for m in methods:
        values = seeds_of(m)
        row = [100 * values[s] for s in table_seeds]
        print(f"| {m} | {chosen[m]:g} | " + " | ".join(f"{v:.2f}" for v in row) +
              f" | **{np.mean(row):.2f} ± {np.std(row):.2f}** |")
    for m in scratch_results:
        values = per_seed(scratch_results[m])
        row = [100 * values[s] for s in sorted(values)]
        print(f"| {m} from scratch | {SCRATCH_LR} | " + " | ".join(f"{v:.2f}" for v in row) +
              f" | {np.mean(row):.2f} ± {np.std(row):.2f} |")

    print("\nPaired by seed (same seed = same initial head, batches and folds): CCP minus its "
          "base loss, test MAP@R points:\n")
    print("| comparison | per-seed differences | mean ± std | CCP better in | paired t (p) |")
    print("|---|---|---|---|---|")
    pairs = [("C2-CCP", "C2"), ("MS-CCP", "MS")]
    for ccp_name, base in pairs:
        if ccp_name in methods and base in methods:
            a, b = seeds_of(ccp_name), seeds_of(base)
            common = sorted(set(a) & set(b))
            diff = np.array([100 * (a[s] - b[s]) for s in common])
            t = scipy.stats.ttest_rel([a[s] for s in common], [b[s] for s in common]) \
                if len(common) > 1 else None
            t_text = f"{t.statistic:.2f} ({t.pvalue:.3f})" if t is not None else "-"
            print(f"| {ccp_name} - {base} | " + ", ".join(f"{d:+.2f}" for d in diff) +
                  f" | {diff.mean():+.2f} ± {diff.std():.2f} | {int((diff > 0).sum())} of "
                  f"{len(diff)} | {t_text} |")
    for ccp_name, base in pairs:
        if ccp_name in scratch_results and base in scratch_results:
            a, b = per_seed(scratch_results[ccp_name]), per_seed(scratch_results[base])
            common = sorted(set(a) & set(b))
            diff = np.array([100 * (a[s] - b[s]) for s in common])
            print(f"| {ccp_name} - {base}, from scratch | " +
                  ", ".join(f"{d:+.2f}" for d in diff) +
                  f" | {diff.mean():+.2f} ± {diff.std():.2f} | {int((diff > 0).sum())} of "
                  f"{len(diff)} | - |")

    if warm_results:
        print("\nWarm start (stage 2 from one C2 model fine-tuned on all 202 training classes; "
              "each method at its chosen rate; test MAP@R %, seeds 0.."
              f"{FLAGS.scratch_seeds - 1}; for the CCP rows the nearest-proxy accuracy of the "
              "initial proxies, epoch 1, vs the same from the pretrained backbone):\n")
        print("| method | test MAP@R per seed | mean ± std | initial nearest-proxy accuracy "
              "(warm / pretrained) |")
        print("|---|---|---|---|")
        for m, results in warm_results.items():
            values = per_seed(results)
            row = [100 * values[s] for s in sorted(values)]
            initial = ""
            if "--ccp" in METHODS[m]:
                warm = initial_accuracy(os.path.join(out, "warm", _slug(m)))
                cold = initial_accuracy(grid_jobs[(m, chosen[m])][2])
                initial = f"{100 * warm:.1f} % / {100 * cold:.1f} %"
            print(f"| {m} | " + ", ".join(f"{v:.2f}" for v in row) +
                  f" | {np.mean(row):.2f} ± {np.std(row):.2f} | {initial} |")
        for ccp_name, base in pairs:
            if ccp_name in warm_results and base in warm_results:
                a, b = per_seed(warm_results[ccp_name]), per_seed(warm_results[base])
                diff = np.array([100 * (a[s] - b[s]) for s in sorted(set(a) & set(b))])
                print(f"\n{ccp_name} - {base} from the warm start, per seed: " +
                      ", ".join(f"{d:+.2f}" for d in diff) +
                      f" (mean {diff.mean():+.2f} ± {diff.std():.2f})")

    if knob_results:
        print("\nC2-CCP's knobs (seed 0, lr " f"{chosen['C2-CCP']:g}; the first row is the "
              "flagfile's K 4, b 8, lambda 2e-4, pair weight 0.1, CCP patience 3): test MAP@R "
              "and, for the restored best model, the training classes' covering radius by "
              "their proxies and the nearest-proxy own-class accuracy, both in the "
              "Lipschitz-normalized space (2 fold models' mean):\n")
        print("| C2-CCP variant | test MAP@R | covering radius | nearest-proxy accuracy "
              "(epoch 1 -> final) | projections | CPU s |")
        print("|---|---|---|---|---|---|")
        rows = [("flagfile (K 4)", grid_results[("C2-CCP", chosen["C2-CCP"])],
                 grid_jobs[("C2-CCP", chosen["C2-CCP"])][2])]
        rows += [(k, knob_results[k], os.path.join(out, "knobs", _slug(k))) for k in KNOBS]
        radius_vs_map = []
        for name, results, run_dir in rows:
            radius, accuracy = final_geometry(run_dir)
            test = 100 * np.mean([f["metrics"]["map_at_r"] for f in results["per_fold"]])
            radius_vs_map.append((radius, test))
            print(f"| {name} | {test:.2f} | {radius:.3f} | "
                  f"{100 * initial_accuracy(run_dir):.1f} -> {100 * accuracy:.1f} % | "
                  f"{projections(run_dir)} | {_seconds(cpu.get(run_dir, float('nan')))} |")
        radii, maps = np.array(radius_vs_map).T
        rho = scipy.stats.spearmanr(radii, maps)
        print(f"\nSpearman rank correlation over these {len(radii)} runs, covering radius vs "
              f"test MAP@R: {rho.statistic:+.2f} (p {rho.pvalue:.3f}; the paper's claim predicts "
              "a negative value)")

    if "C2-CCP" in methods:
        print("\nC2-CCP per epoch (seed 0, chosen lr; mean over the 2 fold models; * = a "
              "projection in that epoch in at least one fold model):\n")
        print("| epoch | validation MAP@R | covering radius | nearest-proxy accuracy |")
        print("|---|---|---|---|")
        series = epoch_series(grid_jobs[("C2-CCP", chosen["C2-CCP"])][2])
        for epoch in range(1, FLAGS.budget_epochs + 1):
            points = [s[epoch] for s in series if epoch in s]
            if not points:
                continue
            mark = "*" if any(p.get("projection") for p in points) else ""
            val = 100 * np.mean([p["val_map_at_r"] for p in points])
            radius = np.mean([p["normalized_mean"] for p in points
                              if p.get("normalized_mean") is not None])
            accuracy = 100 * np.mean([p["nearest_proxy_accuracy"] for p in points
                                      if p.get("nearest_proxy_accuracy") is not None])
            print(f"| {epoch}{mark} | {val:.2f} | {radius:.3f} | {accuracy:.1f} % |")
    print(f"\ntotal wall time {time.time() - started:.0f} s, runner CPU time "
          f"{sum(cpu.values()):.0f} s ({FLAGS.jobs} job(s) at a time)")


def main(argv):
    del argv
    import concurrent.futures

    if FLAGS.regime == "pretrained":
        pretrained_study(os.path.join(FLAGS.output_dir, "pretrained"))
        return

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
