"""experiments/run_folder.py: the lock, the stored configuration, the completion marker."""
import json
import os
import socket
import subprocess
import sys

import pytest

from experiments import config as config_lib
from experiments import run_folder


def test_a_held_lock_names_its_holder_and_is_released(tmp_path):
    with run_folder.RunLock(str(tmp_path)) as lock:
        holder = json.load(open(lock.path))
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        with pytest.raises(run_folder.RunFolderError) as error:
            run_folder.RunLock(str(tmp_path)).acquire()
        message = str(error.value)
        for part in (f"pid {os.getpid()}", socket.gethostname(), holder["started"],
                     "another --output_dir", lock.path):
            assert part in message
    assert not os.path.exists(os.path.join(tmp_path, run_folder.LOCK_FILE))


@pytest.mark.slow
def test_a_dead_process_lock_is_taken_over(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True)
    path = os.path.join(tmp_path, run_folder.LOCK_FILE)
    with open(path, "w") as handle:
        json.dump({"pid": int(dead.stdout), "host": socket.gethostname(), "started": "x"}, handle)
    with run_folder.RunLock(str(tmp_path)):
        assert json.load(open(path))["pid"] == os.getpid()
    # A live holder on another host is never taken over.
    with open(path, "w") as handle:
        json.dump({"pid": int(dead.stdout), "host": "elsewhere", "started": "x"}, handle)
    with pytest.raises(run_folder.RunFolderError, match="on elsewhere"):
        run_folder.RunLock(str(tmp_path)).acquire()


def test_config_mismatch_is_refused_without_writing(tmp_path):
    config = config_lib.ExperimentConfig()
    run_folder.check_config(config.to_dict(), str(tmp_path))  # empty folder: fine
    assert os.listdir(tmp_path) == []
    run_folder.store_config(config.to_dict(), str(tmp_path))
    stored = open(os.path.join(tmp_path, "config.json")).read()
    # Settings that do not change what is trained may differ.
    run_folder.check_config(config.replace(output_dir="elsewhere", report=False).to_dict(),
                            str(tmp_path))
    with pytest.raises(config_lib.ConfigError, match=r"different settings \(learning_rate, seed\)"):
        run_folder.check_config(config.replace(learning_rate=0.5, seed=3).to_dict(),
                                str(tmp_path))
    assert open(os.path.join(tmp_path, "config.json")).read() == stored


def test_completion_marker_vouches_for_its_artifacts(tmp_path):
    folder = str(tmp_path)
    assert not run_folder.completed(folder)
    for name in ("results.json", "report.md"):
        open(os.path.join(folder, name), "w").close()
    run_folder.mark_complete(folder, ["results.json", "report.md"])
    assert run_folder.completed(folder)
    os.remove(os.path.join(folder, "report.md"))  # an artifact lost: the folder resumes
    assert not run_folder.completed(folder)
    run_folder.mark_incomplete(folder)
    assert not os.path.exists(os.path.join(folder, run_folder.COMPLETE_FILE))


def test_a_flag_added_later_counts_as_its_default(tmp_path):
    config = config_lib.ExperimentConfig()
    stored = config.to_dict()
    del stored["loss"]["distance"]  # a config.json written before --distance existed
    run_folder.store_config(stored, str(tmp_path))
    defaults = config.to_dict()
    run_folder.check_config(config.to_dict(), str(tmp_path), defaults)
    with pytest.raises(config_lib.ConfigError, match=r"\(distance\)"):
        run_folder.check_config(config.replace(distance="snr").to_dict(), str(tmp_path),
                                defaults)
