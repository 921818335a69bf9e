"""Trains, evaluates and exports one deep-metric-learning experiment.

  python experiments/run.py                          # digits, experiments/configs/digits.cfg
  python experiments/run.py --flagfile=cub.cfg --data_dir=/data/CUB_200_2011

Every flag is a field of experiments/config.py (``--help`` lists them). ``--flagfile=NAME.cfg``
also finds ``experiments/configs/NAME.cfg``; with neither ``--flagfile`` nor ``--dataset`` the
digits flagfile is used. Re-running with the same --output_dir resumes: finished folds are not
retrained and an interrupted fold continues from its last checkpoint; a complete folder is left
as it is. User errors print one line (``error: ...``) and exit with status 2; a run stopped by
a full disk (3), a divergence (4), lack of memory (5) or Ctrl-C (130) prints one line saying what
the folder kept (experiments/faults.py, FAULTS.md); ``--verbose_errors`` shows the traceback.
"""
import logging as py_logging
import os
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from absl import app, flags, logging  # noqa: E402

from experiments import config as config_lib  # noqa: E402
from experiments import faults  # noqa: E402
from experiments import flags as flags_lib  # noqa: E402
from experiments import run_folder  # noqa: E402

flags_lib.define_flags()
flags.adopt_module_key_flags(flags_lib)
flags.DEFINE_bool("verbose_errors", False, "Show the traceback of user errors and of stopped "
                  "runs (disk full, divergence, Ctrl-C).")
FLAGS = flags.FLAGS
DEFAULT_FLAGFILE = os.path.join(flags_lib.CONFIGS_DIR, "digits.cfg")
USAGE_ERROR = faults.USAGE_ERROR
PROJECT_DIRS = tuple(str(ROOT / name) for name in ("ccp", "data_pipelines", "experiments"))


def preprocess_argv(argv):
    """Resolves ``--flagfile=NAME`` and puts the digits flagfile first when no flagfile and no
    ``--dataset`` is given (the no-flag run)."""
    argv = flags_lib.resolve_flagfile_args(argv)
    given = [a.lstrip("-").split("=")[0] for a in argv[1:]]
    if "flagfile" not in given and "dataset" not in given:
        argv = argv[:1] + [f"--flagfile={DEFAULT_FLAGFILE}"] + argv[1:]
    return argv


def fail(message):
    """Prints a user error on one line and exits with status 2."""
    print("error: " + " ".join(str(message).split()), file=sys.stderr)
    sys.exit(USAGE_ERROR)


HELP_FLAGS = ("help", "helpshort", "helpfull", "helpxml", "?", "h")


def parse_flags(argv):
    try:
        return FLAGS(preprocess_argv(argv))
    except flags.Error as error:
        fail(error)
    except SystemExit as exit_:
        # absl exits with status 1 after printing the help it was asked for: that is success.
        asked = {a.lstrip("-").split("=")[0] for a in argv[1:] if a.startswith("-")}
        if exit_.code == 1 and asked & set(HELP_FLAGS):
            sys.exit(0)
        raise


class _ProjectOnly(py_logging.Filter):
    """Drops INFO records logged by other packages (TensorFlow's checkpoint and export chatter)."""

    def filter(self, record):
        return record.levelno > py_logging.INFO or record.pathname.startswith(PROJECT_DIRS)


def _import_tensorflow_silently():
    """Imports TensorFlow with file descriptor 2 on /dev/null: its native libraries print
    (e.g. "Could not find cuda drivers") before TF_CPP_MIN_LOG_LEVEL takes effect."""
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def quiet_logs():
    """TensorFlow's C++ log off and other packages' INFO lines hidden, unless --verbosity."""
    if FLAGS["verbosity"].present:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    logging.get_absl_handler().addFilter(_ProjectOnly())
    _import_tensorflow_silently()


def run(config):
    quiet_logs()
    # Imported after flag validation: a bad flag fails in a second, not after TF starts.
    from experiments import protocol

    results = protocol.run(config)
    output_dir = config.run.output_dir
    if results.get("already_complete"):
        print(f"{output_dir} already holds a complete run; nothing to do (use another "
              "--output_dir for a new run). Its results:")
    print(results["table"])
    print(f"results: {os.path.join(output_dir, 'results.json')}")
    if config.run.report:
        print(f"report: {os.path.join(output_dir, 'report.md')}")


def main(argv):
    if len(argv) > 1:
        fail(f"unexpected positional arguments: {' '.join(argv[1:])}")
    try:
        config = flags_lib.config_from_flags(FLAGS)
        # Before the data check (seconds to minutes): a path that cannot hold a run fails now.
        run_folder.check_output_dir(config.run.output_dir)
    except (config_lib.UserError, OSError) as error:
        if FLAGS.verbose_errors:
            raise
        fail(error)
    try:
        run(config)
    except BaseException as error:  # noqa: B036  (Ctrl-C too: one line, the folder resumes)
        if isinstance(error, SystemExit):
            raise
        described = faults.describe(error, config.run.output_dir)
        if described is None or FLAGS.verbose_errors:
            raise
        code, message = described
        print("error: " + message, file=sys.stderr)
        sys.exit(code)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
