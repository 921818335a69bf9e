"""Trains, evaluates and exports one deep-metric-learning experiment.

  python experiments/run.py --flagfile=experiments/configs/cub.cfg --data_dir=/data/CUB_200_2011

Every flag is a field of experiments/config.py:ExperimentConfig (``--helpfull`` lists them).
Re-running with the same --output_dir resumes: finished folds are not retrained and an
interrupted fold continues from its last checkpoint.
"""
import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from absl import app, flags, logging  # noqa: E402

from experiments import config as config_lib  # noqa: E402
from experiments import flags as flags_lib  # noqa: E402

flags_lib.define_flags()
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected positional arguments: {' '.join(argv[1:])}")
    try:
        config = flags_lib.config_from_flags(FLAGS)
    except config_lib.ConfigError as error:
        raise app.UsageError(str(error)) from None
    # Imported after flag validation: a bad flag fails in a second, not after TF starts.
    from experiments import protocol

    results = protocol.run(config)
    print(results["table"])
    print(f"results: {os.path.join(config.output_dir, 'results.json')}")
    if config.report:
        print(f"report: {os.path.join(config.output_dir, 'report.md')}")
    logging.info("done")


if __name__ == "__main__":
    app.run(main)
