"""experiments/run.py as a process: help, one-line user errors (exit 2), the folder lock."""
import json
import os
import socket
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # every test starts experiments/run.py as a process

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUN = os.path.join(ROOT, "experiments", "run.py")


def _run(*args, python_flags=()):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run([sys.executable, *python_flags, RUN, *args], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=300)


def _error_lines(stderr):
    return [line for line in stderr.splitlines() if not line.startswith("import time:")]


def test_help_lists_the_project_flags():
    out = _run("--help")
    assert out.returncode == 0
    for flag in ("--ccp_pool_size:", "--loss:", "--[no]skip_corrupt:", "--[no]allow_partial:",
                 "--seed:", "--[no]deterministic:", "--[no]verbose_errors:"):
        assert flag in out.stdout


def test_flag_conflicts_fail_in_one_line_before_tensorflow_starts(tmp_path):
    out = _run("--loss=proxy_anchor", "--ccp", f"--output_dir={tmp_path / 'out'}",
               python_flags=("-X", "importtime"))
    assert out.returncode == 2
    lines = _error_lines(out.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--ccp wraps" in lines[0]
    imported = {line.split("|")[-1].strip() for line in out.stderr.splitlines()
                if line.startswith("import time:")}
    assert "tensorflow" not in imported and "keras" not in imported
    assert not os.path.exists(tmp_path / "out")
    unknown = _run("--no_such_flag=3")
    assert unknown.returncode == 2 and unknown.stderr.startswith("error: ")
    verbose = _run("--loss=proxy_anchor", "--ccp", "--verbose_errors")
    assert verbose.returncode != 0 and "Traceback" in verbose.stderr


def test_a_locked_folder_is_refused_naming_the_holder(tmp_path):
    """The no-flag run (digits defaults) passes its data checks, then meets the lock."""
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": "2026-01-01T00:00"}
    (out_dir / "run.lock").write_text(json.dumps(holder))
    out = _run(f"--output_dir={out_dir}")
    assert out.returncode == 2, out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and f"pid {os.getpid()}" in last
    assert "2026-01-01T00:00" in last and "Traceback" not in out.stderr
    assert sorted(os.listdir(out_dir)) == ["run.lock"]  # nothing written
    # Quiet by default: TensorFlow's native start-up lines are not shown.
    assert "cuda" not in out.stderr.lower() and "InitializeLog" not in out.stderr
