"""What the runner says and which exit status it returns when a run stops (no TensorFlow import).

Each kind of stop has its own exit status (FAULTS.md lists them with what the user sees):

  2    user error: flags, data, output folder (found before anything is trained), or a run
       folder whose kept checkpoints are all damaged
  3    a write failed: disk full, quota, read-only file system (during the run)
  4    training diverged: non-finite loss or gradient, or a collapsed model
  5    out of memory (TensorFlow's ResourceExhaustedError that is not a full disk)
  130  interrupted (Ctrl-C)
  1    anything else: a bug, shown with its traceback

:func:`describe` turns the exception into ``(exit status, one-line message)``; the message
says what happened, what the output folder kept and the command that goes on.
"""
import errno

from experiments import run_folder
from experiments.config import UserError

USAGE_ERROR = 2
WRITE_FAILED = 3
DIVERGED = 4
OUT_OF_MEMORY = 5
INTERRUPTED = 130

_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}
_DISK_WORDS = ("no space left", "disk quota", "read-only file system", "file too large")


def _is_disk_error(error):
    if isinstance(error, OSError) and error.errno in _DISK_ERRNOS:
        return True
    return any(word in str(error).lower() for word in _DISK_WORDS)


def _tf_error_kind(error):
    """The name of a TensorFlow error class (``ResourceExhaustedError``), else None; read by
    name so this module does not import TensorFlow."""
    for cls in type(error).__mro__:
        if cls.__module__.startswith("tensorflow"):
            return type(error).__name__
    return None


def _is_divergence(error):
    if isinstance(error, FloatingPointError):
        return True
    return any(cls.__name__ == "TrainingCollapsed" for cls in type(error).__mro__)


def _first_line(error):
    text = " ".join(str(error).split())
    return text.split(". ")[0].rstrip(".") if text else type(error).__name__


def describe(error, output_dir):
    """``(exit status, one-line message)`` of an exception that stopped a run into
    ``output_dir``; None for an unexpected error (a bug: the caller shows the traceback)."""
    if isinstance(error, KeyboardInterrupt):
        kept = run_folder.kept_summary(output_dir)
        return INTERRUPTED, (f"interrupted (Ctrl-C); {kept} in {output_dir}; rerun the same "
                             "command to resume")
    if _is_divergence(error):
        kept = run_folder.kept_summary(output_dir)
        if run_folder.finished_folds(output_dir):
            way_out = ("its finished folds hold the current settings: rerun with a lower "
                       "--learning_rate and another --output_dir")
        else:
            way_out = ("no fold finished: rerun with a lower --learning_rate into the same "
                       "--output_dir (it starts over with the new settings)")
        return DIVERGED, f"training diverged: {_first_line(error)}; {kept}; {way_out}"
    tf_kind = _tf_error_kind(error)
    if _is_disk_error(error):
        kept = run_folder.kept_summary(output_dir)
        return WRITE_FAILED, (f"a write failed ({_first_line(error)}): disk full or not "
                              f"writable; {kept} in {output_dir}; free space and rerun the "
                              "same command to resume")
    if tf_kind == "ResourceExhaustedError":
        kept = run_folder.kept_summary(output_dir)
        return OUT_OF_MEMORY, (f"out of memory ({_first_line(error)}); {kept} in "
                               f"{output_dir}; lower --classes_per_batch or --eval_batch_size "
                               "and rerun into another --output_dir, or free memory and rerun "
                               "the same command to resume")
    if any(cls.__name__ == "DamagedCheckpointError" for cls in type(error).__mro__):
        return USAGE_ERROR, " ".join(str(error).split())
    if isinstance(error, (UserError, OSError)):
        return USAGE_ERROR, " ".join(str(error).split())
    return None
