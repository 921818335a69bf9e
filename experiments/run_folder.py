"""The output folder's lifecycle: lock, stored configuration, completion marker (no TensorFlow).

A run folder moves through: checked (nothing written) -> locked (``run.lock``, one process) ->
``config.json`` (a resumed run must match it) -> fold artifacts -> results, exports, report ->
``COMPLETE`` (written last; it lists the artifacts it vouches for). A rerun of a complete folder
does nothing; a folder whose marker is missing, or whose listed artifacts are not all there,
resumes.
"""
import datetime
import glob
import json
import os
import re
import shutil
import socket
import tempfile

from absl import logging

from experiments.config import ConfigError, UserError, current_flag_names

LOCK_FILE = "run.lock"
CONFIG_FILE = "config.json"
PREVIOUS_CONFIG_FILE = "config.prev.json"
PREVIOUS_RUN_DIR = "previous_run"
COMPLETE_FILE = "COMPLETE"
FOLD_RESULT_FILE = "fold_result.json"  # a fold is finished when it exists (results.py)

# Flags that do not change what is trained: they may differ between a run and its resumption.
RESUME_FREE_FLAGS = frozenset({
    "output_dir", "progress_bar", "report", "export", "tsne_points", "data_dir", "repeats",
    "compute_nmi", "eval_batch_size", "skip_corrupt", "allow_partial", "cache_images",
    "data_source", "radius_images",
})


class RunFolderError(UserError, RuntimeError):
    """The output folder cannot be used as asked (locked, different settings, unwritable)."""


def write_json(path, payload):
    """Writes JSON atomically: a killed run never leaves half a file."""
    tmp = path + ".tmp"
    with open(tmp, "w") as handle:
        json.dump(payload, handle, indent=2, sort_keys=True)
    os.replace(tmp, path)


def read_json(path):
    with open(path) as handle:
        return json.load(handle)


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


class RunLock:
    """An exclusive lock on an output folder, held by one process (a file made with O_EXCL).

    A lock left by a dead process on this host is taken over; any other holder makes
    :meth:`acquire` fail at once with a message naming it (pid, host, start time).
    """

    def __init__(self, output_dir):
        self.path = os.path.join(output_dir, LOCK_FILE)
        self.held = False

    def _holder(self):
        try:
            return read_json(self.path)
        except (OSError, ValueError):
            return None

    def _stale(self, holder):
        if holder is None:  # unreadable: a process died while writing it
            return True
        return holder.get("host") == socket.gethostname() and not _pid_alive(holder.get("pid"))

    def _create(self):
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": datetime.datetime.now(datetime.timezone.utc).isoformat(
                    timespec="seconds")}
        with os.fdopen(fd, "w") as handle:
            json.dump(info, handle)

    def acquire(self):
        try:
            self._create()
        except FileExistsError:
            holder = self._holder()
            if not self._stale(holder):
                raise RunFolderError(
                    f"{os.path.dirname(self.path)} is in use by pid {holder.get('pid')} on "
                    f"{holder.get('host')} (started {holder.get('started')}): wait for it to "
                    f"finish or use another --output_dir; if that process is gone, delete "
                    f"{self.path}") from None
            os.remove(self.path)  # a dead process's lock on this host: take it over
            self._create()
        self.held = True
        return self

    def release(self):
        if self.held:
            self.held = False
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc_info):
        self.release()


def check_output_dir(output_dir):
    """Refuses an output folder that cannot be written, before anything else is checked: a
    path that is a file, a path under a file, a read-only or otherwise unwritable place. Leaves
    nothing behind (the write probe is removed)."""
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise RunFolderError(f"--output_dir={output_dir} is a file, not a folder: give a folder "
                             "path (new or holding a run)")
    existing = os.path.abspath(output_dir)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise RunFolderError(f"--output_dir={output_dir} cannot be created: {existing} is a "
                             "file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-check-", dir=existing)
    except OSError as error:
        raise RunFolderError(f"--output_dir={output_dir} cannot be written ({existing}: "
                             f"{error.strerror}): give a writable folder") from None
    os.close(fd)
    os.remove(probe)


def finished_folds(output_dir):
    """``["repeat_R/fold_K", ...]`` of the folds whose result is stored, sorted."""
    found = glob.glob(os.path.join(output_dir, "repeat_*", "fold_*", FOLD_RESULT_FILE))
    return sorted(os.path.relpath(os.path.dirname(p), output_dir) for p in found)


def latest_checkpoints(output_dir):
    """``{"repeat_R/fold_K": epoch}`` of the unfinished folds' latest checkpoints (read from
    TensorFlow's ``checkpoints/checkpoint`` index, no TensorFlow needed)."""
    kept = {}
    for index in glob.glob(os.path.join(output_dir, "repeat_*", "fold_*", "checkpoints",
                                        "checkpoint")):
        fold_dir = os.path.dirname(os.path.dirname(index))
        if os.path.exists(os.path.join(fold_dir, FOLD_RESULT_FILE)):
            continue
        try:
            with open(index) as handle:
                found = re.search(r'^model_checkpoint_path: "ckpt-(\d+)"', handle.read(), re.M)
        except OSError:
            continue
        if found:
            kept[os.path.relpath(fold_dir, output_dir)] = int(found.group(1))
    return dict(sorted(kept.items()))


def kept_summary(output_dir):
    """What a stopped run left in ``output_dir``, in words ("checkpoint of epoch 3 of
    repeat_0/fold_1 kept")."""
    parts = []
    done = finished_folds(output_dir)
    if done:
        parts.append(f"{len(done)} finished fold{'s' if len(done) > 1 else ''} "
                     f"({', '.join(done)})")
    parts += [f"checkpoint of epoch {epoch} of {fold}"
              for fold, epoch in latest_checkpoints(output_dir).items()]
    if not parts:
        return "nothing trained was kept yet"
    return "; ".join(parts) + " kept"


def stored_config(output_dir):
    """The ``config.json`` of ``output_dir`` as a dict, or None when there is none.

    Raises:
      RunFolderError: the file is damaged (not JSON, e.g. truncated): names it and the way out.
    """
    path = os.path.join(output_dir, CONFIG_FILE)
    if not os.path.exists(path):
        return None
    try:
        stored = read_json(path)
        if not isinstance(stored, dict):
            raise ValueError("not a JSON object")
    except (ValueError, UnicodeDecodeError) as error:
        raise RunFolderError(
            f"{path} is damaged ({type(error).__name__}: {error}); it records the settings of "
            f"the run in {output_dir}: delete it and rerun with that run's flags to resume, or "
            "use another --output_dir") from None
    return stored


def check_config(config_dict, output_dir, default_dict=None, allow_restart=False):
    """Refuses a folder holding a run with other training settings (nothing is written).

    Args:
      config_dict: ``{group: {flag: value}}`` (``ExperimentConfig.to_dict()``).
      default_dict: the defaults in the same layout; a flag missing from a stored config.json
        (written before the flag existed) counts as its default.
      allow_restart: a folder whose run has no finished fold is not refused: the changed flag
        names are returned (the caller sets that run aside with :func:`restart`).
    Returns:
      ``[]``, or with ``allow_restart`` the changed flags of a restartable folder.
    Raises:
      ConfigError: other settings; the message gives the flags that resume the stored run.
      RunFolderError: a damaged config.json.
    """
    stored_dict = stored_config(output_dir)
    if stored_dict is None:
        return []
    current = _flatten(config_dict)
    stored = {**_flatten(default_dict or {}), **_flatten(stored_dict)}
    changed = sorted(k for k in current if k not in RESUME_FREE_FLAGS
                     and json.loads(json.dumps(current[k])) != stored.get(k))
    if not changed:
        return []
    done = finished_folds(output_dir)
    if allow_restart and not done:
        return changed
    resume = " ".join(_flag_text(k, stored.get(k)) for k in changed)
    finished = (f" and {len(done)} finished fold{'s' if len(done) > 1 else ''}" if done
                else "")
    raise ConfigError(
        f"{output_dir} holds a run with different settings ({', '.join(changed)}){finished}: "
        f"to resume it, rerun with {resume}; for the new settings use another --output_dir")


def _flag_text(name, value):
    if isinstance(value, bool):
        return f"--{name}" if value else f"--no{name}"
    if isinstance(value, (list, tuple)):
        return f"--{name}={','.join(str(v) for v in value)}"
    return f"--{name}={value}"


def restart(output_dir, changed):
    """Sets aside an unfinished run (no fold finished) for a run with other settings: its
    ``config.json`` becomes ``config.prev.json`` and its fold folders (checkpoints, logs) move
    to ``previous_run/`` (replacing an earlier one), so nothing of it is resumed."""
    logging.warning("%s holds an unfinished run (no fold finished) with other settings (%s): "
                    "starting over with the new settings; the old config.json is kept as %s and "
                    "its checkpoints and logs in %s/", output_dir, ", ".join(changed),
                    PREVIOUS_CONFIG_FILE, PREVIOUS_RUN_DIR)
    previous = os.path.join(output_dir, PREVIOUS_RUN_DIR)
    shutil.rmtree(previous, ignore_errors=True)
    os.makedirs(previous)
    for path in glob.glob(os.path.join(output_dir, "repeat_*")):
        os.replace(path, os.path.join(previous, os.path.basename(path)))
    os.replace(os.path.join(output_dir, CONFIG_FILE),
               os.path.join(output_dir, PREVIOUS_CONFIG_FILE))


def store_config(config_dict, output_dir):
    """Writes ``config.json`` (``{group: {flag: value}}``)."""
    write_json(os.path.join(output_dir, CONFIG_FILE), config_dict)


def _flatten(config_dict):
    """``{flag: value}`` of a config.json (grouped, or flat from an earlier version), with
    renamed flags under their current names (a run stored before a rename resumes)."""
    if not all(isinstance(group, dict) for group in config_dict.values()):
        return current_flag_names(config_dict)  # a flat config.json of an earlier version
    flat = {}
    for value in config_dict.values():
        flat.update(value)
    return current_flag_names(flat)


def completed(output_dir):
    """True when ``COMPLETE`` exists and every artifact it lists is still there."""
    path = os.path.join(output_dir, COMPLETE_FILE)
    if not os.path.exists(path):
        return False
    try:
        artifacts = read_json(path)["artifacts"]
    except (OSError, ValueError, KeyError):
        return False
    return all(os.path.exists(os.path.join(output_dir, a)) for a in artifacts)


def mark_incomplete(output_dir):
    """Removes the completion marker (before anything in the folder changes)."""
    try:
        os.remove(os.path.join(output_dir, COMPLETE_FILE))
    except FileNotFoundError:
        pass


def mark_complete(output_dir, artifacts):
    """Writes ``COMPLETE`` listing ``artifacts`` (paths relative to ``output_dir``), last."""
    finished = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    write_json(os.path.join(output_dir, COMPLETE_FILE),
               {"finished": finished, "artifacts": sorted(artifacts)})
