"""`make demo`: digits C2 vs C2-CCP (same seed, same budget), results table and report paths.

  python experiments/demo.py --output_dir=demo_output
"""
import os
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from absl import app, flags  # noqa: E402

from experiments import flags as flags_lib  # noqa: E402

DIGITS_FLAGFILE = pathlib.Path(__file__).resolve().parent / "configs" / "digits.cfg"
flags.DEFINE_string("output_dir", "demo_output", "Folder of the two demo runs.")
flags.DEFINE_bool("progress_bar", False, "Show per-epoch progress bars.")
FLAGS = flags.FLAGS


def comparison_table(results_by_method):
    """One markdown table, a column pair (128D average, concatenation) per method."""
    methods = list(results_by_method)
    first = results_by_method[methods[0]]
    dims, folds = first["embedding_size"], first["folds"]
    header = "| metric | " + " | ".join(
        f"{m} {dims}D avg | {m} {dims * folds}D concat" for m in methods) + " |"
    lines = [header, "|---|" + "---|---|" * len(methods)]
    for name, title in (("precision_at_1", "P@1"), ("recall_at_2", "R@2"), ("recall_at_4", "R@4"),
                        ("recall_at_8", "R@8"), ("r_precision", "R-precision"),
                        ("map_at_r", "MAP@R"), ("nmi", "NMI")):
        if name not in first["average"]:
            continue
        cells = []
        for method in methods:
            res = results_by_method[method]
            cells.append(f"{100 * res['average'][name]['mean']:.2f} ± {100 * res['average'][name]['std']:.2f}")
            cells.append(f"{100 * res['concatenated'][name]['mean']:.2f}")
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv):
    del argv
    from experiments import protocol

    base = flags_lib.parse_flagfile(str(DIGITS_FLAGFILE))
    runs = {
        "C2": base.replace(ccp=False, output_dir=os.path.join(FLAGS.output_dir, "digits_c2"),
                           progress_bar=FLAGS.progress_bar),
        "C2-CCP": base.replace(ccp=True, output_dir=os.path.join(FLAGS.output_dir, "digits_c2_ccp"),
                               progress_bar=FLAGS.progress_bar),
    }
    results = {}
    for method, config in runs.items():
        started = time.time()
        results[method] = protocol.run(config)
        print(f"{method}: finished in {time.time() - started:.0f} s -> {config.output_dir}", flush=True)
    table = comparison_table(results)
    with open(os.path.join(FLAGS.output_dir, "comparison.md"), "w") as handle:
        handle.write(table + "\n")
    folds = next(iter(results.values()))["folds"]
    print(f"\nDigits (classes 5-9 unseen in training), {folds} class folds, test metrics in %"
          " (fold average ± std, and the concatenation of the fold models):\n")
    print(table)
    for method, config in runs.items():
        print(f"{method} report: {os.path.join(config.output_dir, 'report.md')}")
        print(f"{method} SavedModel (ensemble): {os.path.join(config.output_dir, 'export', 'ensemble')}")


if __name__ == "__main__":
    app.run(main)
