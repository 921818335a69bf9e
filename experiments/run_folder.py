"""The output folder's lifecycle: lock, stored configuration, completion marker (no TensorFlow).

A run folder moves through: checked (nothing written) -> locked (``run.lock``, one process) ->
``config.json`` (a resumed run must match it) -> fold artifacts -> results, exports, report ->
``COMPLETE`` (written last; it lists the artifacts it vouches for). A rerun of a complete folder
does nothing; a folder whose marker is missing, or whose listed artifacts are not all there,
resumes.
"""
import datetime
import json
import os
import socket

from experiments.config import ConfigError, UserError

LOCK_FILE = "run.lock"
CONFIG_FILE = "config.json"
COMPLETE_FILE = "COMPLETE"

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


def check_config(config_dict, output_dir, default_dict=None):
    """Refuses a folder holding a run with other training settings (nothing is written).

    Args:
      config_dict: ``{group: {flag: value}}`` (``ExperimentConfig.to_dict()``).
      default_dict: the defaults in the same layout; a flag missing from a stored config.json
        (written before the flag existed) counts as its default.
    """
    path = os.path.join(output_dir, CONFIG_FILE)
    if not os.path.exists(path):
        return
    current = _flatten(config_dict)
    stored = {**_flatten(default_dict or {}), **_flatten(read_json(path))}
    changed = sorted(k for k in current if k not in RESUME_FREE_FLAGS
                     and json.loads(json.dumps(current[k])) != stored.get(k))
    if changed:
        raise ConfigError(
            f"{output_dir} holds a run with different settings ({', '.join(changed)}); "
            "use another --output_dir or the same flags to resume")


def store_config(config_dict, output_dir):
    """Writes ``config.json`` (``{group: {flag: value}}``)."""
    write_json(os.path.join(output_dir, CONFIG_FILE), config_dict)


def _flatten(config_dict):
    if not all(isinstance(group, dict) for group in config_dict.values()):
        return dict(config_dict)  # a flat config.json of an earlier version
    flat = {}
    for value in config_dict.values():
        flat.update(value)
    return flat


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
