"""Accelerator flags of experiments/run.py (issue 13): --steps_per_execution, --jit_compile,
--strategy=tpu checks and the TPU connection error.

The library tests prove the weights (tests/ccp/test_training_steps.py: N steps per call give
the weights of 1; the step and greedy k-center compile with XLA); here: the flags reach the
Trainer and a whole protocol run reports the same metrics.
"""
import json
import os
import socket
import subprocess
import sys
import time

import pytest

from experiments import builders, fold_training, protocol
from experiments import config as config_lib
from experiments import flags as flags_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = os.path.join(ROOT, "experiments", "configs")
TPU_READY = dict(strategy="tpu", tpu="my-tpu", input_pipeline="ingraph", data_source="tfds")


def _digits(**changes):
    return flags_lib.parse_flagfile(os.path.join(CONFIGS, "digits.cfg")).replace(**changes)


def test_tpu_needs_a_name_the_ingraph_pipeline_and_a_tfds_copy():
    with pytest.raises(config_lib.ConfigError) as raised:
        config_lib.validate(_digits(strategy="tpu", input_pipeline="generator"))
    message = str(raised.value)
    for flag in ("--tpu", "--input_pipeline=ingraph", "--data_source=tfds"):
        assert flag in message
    assert "\n" not in message
    ingraph_only = _digits(strategy="tpu", tpu="my-tpu")  # the in-graph sampler by default
    with pytest.raises(config_lib.ConfigError, match="--data_source=tfds") as raised:
        config_lib.validate(ingraph_only)
    assert "--input_pipeline" not in str(raised.value)
    # A TFDS copy on cloud storage is accepted without a local folder check.
    cub = _digits(dataset="cub", data_dir="gs://my-bucket/tfds", **TPU_READY)
    assert config_lib.validate(cub) is cub
    with pytest.raises(config_lib.ConfigError, match="--steps_per_execution must be >= 1"):
        config_lib.validate(_digits(steps_per_execution=0))


@pytest.mark.slow
def test_tpu_flag_errors_are_one_line_before_tensorflow_starts(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    out = subprocess.run(
        [sys.executable, "-X", "importtime", os.path.join(ROOT, "experiments", "run.py"),
         "--strategy=tpu", "--tpu=my-tpu", "--input_pipeline=generator",
         f"--output_dir={tmp_path / 'out'}"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if not line.startswith("import time:")]
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "--input_pipeline=ingraph" in lines[0] and "--data_source=tfds" in lines[0]
    imported = {line.split("|")[-1].strip() for line in out.stderr.splitlines()
                if line.startswith("import time:")}
    assert "tensorflow" not in imported and not os.path.exists(tmp_path / "out")


def _closed_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("tpu", ["grpc://127.0.0.1:{port}", "no-such-tpu-ccp-test"])
def test_an_unreachable_tpu_is_a_user_error_naming_the_flag(tpu):
    """A grpc:// address that does not answer fails fast (gRPC alone retries for minutes); a
    Cloud TPU name that does not resolve fails in the cluster resolver."""
    tpu = tpu.format(port=_closed_port())
    config = _digits(**TPU_READY).replace(tpu=tpu)
    start = time.monotonic()
    with pytest.raises(config_lib.UserError, match=f"--tpu='{tpu}'") as raised:
        builders.build_strategy(config)
    assert time.monotonic() - start < 2 * builders.TPU_CONNECT_TIMEOUT_S
    assert "\n" not in str(raised.value)


def _metrics(tmp_path, name, **changes):
    config = _digits(output_dir=str(tmp_path / name), folds=1, steps_per_epoch=5, max_epochs=1,
                     embedding_size=16, ccp=False, classes_per_batch=3, samples_per_class=4,
                     progress_bar=False,
                     compute_nmi=False, tsne_points=0, report=False, export=False, **changes)
    protocol.run(config)
    stored = json.load(open(os.path.join(config.run.output_dir, "results.json")))
    return stored["per_fold"], stored["average"]


@pytest.mark.slow
def test_steps_per_execution_gives_the_same_results(tmp_path):
    """5 steps: one call of 4 steps and one of 1 (the library test proves equal weights with
    CCP; here the flag's way through the protocol to results.json)."""
    assert _metrics(tmp_path, "spe4", steps_per_execution=4) == _metrics(tmp_path, "spe1")


def test_the_flags_reach_the_trainer(tmp_path):
    import tensorflow as tf

    config = _digits(steps_per_execution=4, jit_compile=True, embedding_size=8)
    strategy = builders.build_strategy(config)
    with strategy.scope():
        model = builders.build_model(config)
        loss = builders.build_loss(config, num_classes=5)
        trainer = fold_training.build_trainer(config, model, loss, strategy, str(tmp_path))
    assert trainer.steps_per_execution == 4
    replica_fn = trainer.steps["train"]._replica_fn
    assert isinstance(replica_fn, tf.types.experimental.PolymorphicFunction)
    assert replica_fn._jit_compile is True
    plain = fold_training.build_trainer(config.replace(steps_per_execution=1, jit_compile=False),
                                        model, loss, strategy, str(tmp_path / "plain"))
    assert plain.steps_per_execution == 1
    assert not isinstance(plain.steps["train"]._replica_fn,
                          tf.types.experimental.PolymorphicFunction)
