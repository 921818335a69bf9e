"""MultiWorkerMirroredStrategy: two worker processes on localhost train in lockstep and match
a single process that sees the same global batches (issue 7)."""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # worker processes (subprocess) under MultiWorkerMirroredStrategy

JOB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "multi_worker_job.py")


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _run(out, tf_config=None, run_dir=None):
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    if tf_config is not None:
        env["TF_CONFIG"] = json.dumps(tf_config)
    args = [str(out)] + ([str(run_dir)] if run_dir else [])
    return subprocess.Popen([sys.executable, JOB, *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_two_workers_match_one_process(tmp_path):
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    run_dir = tmp_path / "run"  # shared by both workers, as a shared file system would be
    workers = [_run(tmp_path / f"worker{i}.npz",
                    {"cluster": cluster, "task": {"type": "worker", "index": i}}, run_dir)
               for i in range(2)]
    single = _run(tmp_path / "single.npz")
    for process in workers + [single]:
        output, _ = process.communicate(timeout=300)
        assert process.returncode == 0, output[-3000:]
    results = [np.load(tmp_path / name) for name in ("worker0.npz", "worker1.npz", "single.npz")]
    assert int(results[0]["replicas"]) == 2 and int(results[2]["replicas"]) == 1
    keys = [k for k in results[0].files if k.startswith("arr_")]
    for key in keys:
        np.testing.assert_allclose(results[0][key], results[1][key], atol=1e-6)  # lockstep
        np.testing.assert_allclose(results[0][key], results[2][key], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(results[0]["losses"], results[2]["losses"], rtol=1e-4)
    # The chief (worker 0) owns the checkpoints and the event log; worker 1 saved privately.
    assert (run_dir / "ckpt" / "checkpoint").exists()
    assert (run_dir / "ckpt" / "worker_1" / "checkpoint").exists()
    assert len((run_dir / "logs" / "events.jsonl").read_text().splitlines()) == 2
