"""`make demo`: C2 vs C2-CCP on the embedded `glyphs` set (same seed, same budget), no download.

  python experiments/demo.py --output_dir=demo_output

Both runs go through the experiment runner (``experiments/run.py``, flagfile
``experiments/configs/glyphs.cfg``; C2 is the same with ``--noccp``), one subprocess each, so
the demo uses exactly the command-line path a user would. It prints the comparison of the two
runs' test metrics and writes it, with links to both runs' reports, to ``<output_dir>/report.md``.
"""
import json
import os
import pathlib
import subprocess
import sys
import time

from absl import app, flags

REPO = pathlib.Path(__file__).resolve().parents[1]
RUNNER = REPO / "experiments" / "run.py"
GLYPHS_FLAGFILE = REPO / "experiments" / "configs" / "glyphs.cfg"
RUNS = {"C2": ("--noccp",), "C2-CCP": ("--ccp",)}
METRIC_ROWS = (("precision_at_1", "P@1"), ("recall_at_2", "R@2"), ("recall_at_4", "R@4"),
               ("recall_at_8", "R@8"), ("r_precision", "R-precision"), ("map_at_r", "MAP@R"),
               ("nmi", "NMI"))

flags.DEFINE_string("output_dir", "demo_output", "Folder of the two demo runs.")
flags.DEFINE_bool("progress_bar", False, "Show per-epoch progress bars.")
flags.DEFINE_list("runner_flags", [], "Extra flags for both runs without the leading --, e.g. "
                  "max_epochs=1,steps_per_epoch=2 for a smoke test (they override the flagfile).")
FLAGS = flags.FLAGS


def comparison_table(results_by_method):
    """One markdown table, a column pair (128D average, concatenation) per method.

    Args:
      results_by_method: {method: the runner's results.json dict}.
    """
    methods = list(results_by_method)
    first = results_by_method[methods[0]]
    dims, folds = first["embedding_size"], first["folds"]
    header = "| metric | " + " | ".join(
        f"{m} {dims}D avg | {m} {dims * folds}D concat" for m in methods) + " |"
    lines = [header, "|---|" + "---|---|" * len(methods)]
    for name, title in METRIC_ROWS:
        if name not in first["average"]:
            continue
        cells = []
        for method in methods:
            res = results_by_method[method]
            average = res["average"][name]
            cells.append(f"{100 * average['mean']:.2f} ± {100 * average['std']:.2f}")
            cells.append(f"{100 * res['concatenated'][name]['mean']:.2f}")
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_one(method, output_dir):
    """Runs experiments/run.py for one method; returns its results.json dict."""
    command = [sys.executable, str(RUNNER), f"--flagfile={GLYPHS_FLAGFILE}", *RUNS[method],
               f"--output_dir={output_dir}",
               "--progress_bar" if FLAGS.progress_bar else "--noprogress_bar",
               *(f"--{flag}" for flag in FLAGS.runner_flags)]
    print(f"{method}: {' '.join(command[1:])}", flush=True)
    completed = subprocess.run(command, cwd=REPO)
    if completed.returncode:
        raise SystemExit(f"demo: the {method} run failed (exit {completed.returncode}); "
                         f"its log is above, its folder {output_dir}")
    with open(os.path.join(output_dir, "results.json")) as handle:
        return json.load(handle)


def main(argv):
    del argv
    results, dirs = {}, {}
    for method in RUNS:
        dirs[method] = os.path.join(FLAGS.output_dir, "glyphs_" + method.lower().replace("-", "_"))
        started = time.time()
        results[method] = run_one(method, dirs[method])
        print(f"{method}: finished in {time.time() - started:.0f} s -> {dirs[method]}",
              flush=True)
    table = comparison_table(results)
    first = next(iter(results.values()))
    title = (f"glyphs: {first['folds']} class folds of the 202 training characters, test on 203 "
             "unseen characters; test metrics in % (fold average ± std over folds, and the "
             "concatenation of the fold models)")
    lines = ["# Demo: C2 vs C2-CCP on glyphs", "", title + ".", "", table, ""]
    for method, folder in dirs.items():
        lines.append(f"- {method}: report `{os.path.join(folder, 'report.md')}`, SavedModel "
                     f"(ensemble) `{os.path.join(folder, 'export', 'ensemble')}`")
    lines += ["", f"Settings: `{GLYPHS_FLAGFILE.relative_to(REPO)}` (C2: the same with "
              "`--noccp`). A short budget: one seed; see BENCHMARKS.md (learning quality) for "
              "3 seeds and the other methods."]
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    report = os.path.join(FLAGS.output_dir, "report.md")
    with open(report, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    with open(os.path.join(FLAGS.output_dir, "comparison.md"), "w") as handle:
        handle.write(table + "\n")
    print(f"\n{title}:\n")
    print(table)
    print(f"\ndemo report: {report}")
    for method, folder in dirs.items():
        print(f"{method} report: {os.path.join(folder, 'report.md')}")
        print(f"{method} SavedModel (ensemble): {os.path.join(folder, 'export', 'ensemble')}")


if __name__ == "__main__":
    app.run(main)
