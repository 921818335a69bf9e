"""CCP projections every N training steps (issue 15; the reference's ``step_at_batch``):
projections exactly at steps N, 2N, ... of the training phase (mid-epoch too, whatever
steps_per_execution), identical runs with 1 or 4 steps per device call, a killed and resumed
run that projects at the same steps, bad values and flags rejected."""
import os

import numpy as np
import pytest
import tensorflow as tf

from ccp import defaults
from ccp import projection
from ccp.projection import CONTINUE, ProjectionSchedule
from experiments import config as config_lib
from experiments import flags as flags_lib
from test_training import make_model, make_trainer, pool_fn, train_dataset_fn, validation_data

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# ----------------------------------------------------------------------------------------------
# Where the projections fall (pure Python), bad values.
# ----------------------------------------------------------------------------------------------


def test_offsets_match_a_step_by_step_count():
    for every in range(1, 6):
        schedule = ProjectionSchedule(every_steps=every)
        for done in range(13):
            for steps in range(8):
                # Independent count: walk the steps one by one, a counter reset at each projection.
                expected, counter = [], done % every
                for offset in range(1, steps + 1):
                    counter += 1
                    if counter == every:
                        expected.append(offset)
                        counter = 0
                assert schedule.projection_offsets(done, steps) == expected, (every, done, steps)
    assert ProjectionSchedule().projection_offsets(5, 10) == []  # off by default


def test_epoch_ends_never_project_and_the_anchor_takes_the_current_weights():
    weights = [tf.Variable([1.0, 2.0]), tf.Variable([[3.0]])]
    proj = projection.AlternatingProjection(weights, None, lambda_0=0.1, decay=0.5, patience=1,
                                            projection_every_steps=2)
    assert proj.projection_every_steps == 2
    for value in (0.9, 0.5, 0.1, 0.0):  # patience 1 would end an instance at every epoch
        assert proj.on_epoch_end(value).action == CONTINUE
    assert proj.schedule.instance == 0 and float(proj.lambda_t.numpy()) == 0.0
    weights[0].assign([5.0, 6.0])
    event = proj.project()
    np.testing.assert_array_equal(proj.w_prev[0].numpy(), [5.0, 6.0])
    np.testing.assert_array_equal(proj.w_prev[1].numpy(), [[3.0]])
    assert event["instance"] == 1 and event["steps_in_instance"] == 2
    assert event["lambda"] == pytest.approx(0.1 * 0.5)
    assert event["best_value"] is None  # no values compared


@pytest.mark.parametrize("value", [-1, 2.5, True, "3", None, float("nan")])
def test_bad_values_are_rejected(value):
    with pytest.raises(ValueError, match="projection_every_steps must be an integer >= 0"):
        projection.AlternatingProjection([tf.Variable(1.0)], None, projection_every_steps=value)


def test_exclusive_with_fixed_interval():
    with pytest.raises(ValueError, match="projection_every_steps or fixed_interval"):
        projection.AlternatingProjection([tf.Variable(1.0)], None, fixed_interval=2,
                                         projection_every_steps=3)
    with pytest.raises(ValueError, match="fixed_interval"):
        ProjectionSchedule(fixed_interval=1, every_steps=1)


# ----------------------------------------------------------------------------------------------
# The flag.
# ----------------------------------------------------------------------------------------------


def _digits(**changes):
    path = os.path.join(ROOT, "experiments", "configs", "digits.cfg")
    return flags_lib.parse_flagfile(path).replace(**changes)


def test_flag_default_validation_and_wiring():
    import inspect

    from experiments import builders, fold_training

    default = inspect.signature(projection.AlternatingProjection).parameters[
        "projection_every_steps"].default
    assert config_lib.ExperimentConfig().ccp.projection_every_steps == default \
        == defaults.CCP_PROJECTION_EVERY_STEPS == 0
    with pytest.raises(config_lib.ConfigError, match="--ccp_projection_every_steps must be >= 0"):
        config_lib.validate(_digits(ccp_projection_every_steps=-2))
    with pytest.raises(config_lib.ConfigError,
                       match="--ccp_fixed_interval .* and --ccp_projection_every_steps"):
        config_lib.validate(_digits(ccp_fixed_interval=2, ccp_projection_every_steps=3))
    path = os.path.join(ROOT, "experiments", "configs", "digits.cfg")
    config = config_lib.validate(flags_lib.parse_flagfile(
        path, extra=["--ccp_projection_every_steps=7"]))
    assert config.ccp.projection_every_steps == 7
    model = builders.build_model(config)
    loss = builders.build_loss(config, num_classes=3)
    assert fold_training.build_projection(config, model, loss).projection_every_steps == 7


# ----------------------------------------------------------------------------------------------
# The Trainer: the steps, steps_per_execution, resume.
# ----------------------------------------------------------------------------------------------


def _spy_device_calls(trainer):
    """Records (global step before, steps) of every device call of the training phase."""
    calls, step = [], trainer.steps["train"]
    run = step.run

    def recorded(iterator, count):
        calls.append((int(trainer.state.step.numpy()), int(count)))
        return run(iterator, count)
    step.run = recorded
    return calls


def _stable(records):
    return [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in records]


def _run(tmp_path, name, steps_per_execution=1, seed=0, on_pool=None, callbacks=(),
         validation=True, saved=True, **kwargs):
    """A C2-CCP run projecting every 3 training steps; ``on_pool(index)`` sees each pool call;
    ``saved``: checkpoints and event log under ``tmp_path / name``."""
    def recorded_pool(model, index):
        if on_pool is not None:
            on_pool(index)
        return pool_fn(model, index)
    trainer = make_trainer(model=make_model(dropout=True, seed=seed), projection_args=dict(
                               lambda_0=0.1, decay=0.5, pool_size=3, projection_every_steps=3),
                           learning_rate=0.02, steps_per_execution=steps_per_execution,
                           checkpoint_dir=str(tmp_path / name / "ckpt") if saved else None,
                           log_dir=str(tmp_path / name / "logs") if saved else None, **kwargs)
    calls = _spy_device_calls(trainer)
    result = trainer.fit(train_dataset_fn(), validation_data() if validation else None,
                         proxy_pool_fn=recorded_pool, callbacks=callbacks)
    return trainer, result, calls


def test_projections_at_every_third_step_with_one_or_four_steps_per_call(tmp_path):
    # 5 steps an epoch (3 does not divide it), 3 epochs: projections at steps 3, 6, ..., 15.
    at_last_epoch = {}

    def keep_last_weights(trainer, record):
        at_last_epoch.update(epoch=record["epoch"],
                             weights=[v.numpy() for v in trainer.model.trainable_variables])

    runs = {}
    for spe in (1, 4):
        pools = []
        trainer, result, calls = _run(tmp_path, f"spe{spe}", spe, on_pool=pools.append,
                                      steps_per_epoch=5, max_epochs=3, saved=False,
                                      callbacks=[keep_last_weights])
        runs[spe] = trainer, result, calls
        events = result["projections"]
        assert [e["step"] for e in events] == [3, 6, 9, 12, 15]
        assert [e["epoch"] for e in events] == [1, 2, 2, 3, 3]
        assert [e["instance"] for e in events] == [1, 2, 3, 4, 5]
        assert [e["lambda"] for e in events] == pytest.approx([0.1 * 0.5 ** t
                                                              for t in range(1, 6)])
        assert pools == [0, 1, 2, 3, 4, 5]  # initial proxies, then one pool per projection
        assert sum(count for _, count in calls) == 15
        # No device call crosses a projection step (a call may end on one).
        assert all((start + k) % 3 for start, count in calls for k in range(1, count))
        # Validation and early stopping still run at the epoch ends.
        assert [r["ccp_action"] for r in result["history"]] == ["continue"] * 3
        assert all("val_map_at_r" in r for r in result["history"])
        assert result["best_epoch"] >= 1 and result["best_metric"] is not None
        # The last projection (step 15, the last step) anchored at the weights of that step.
        assert at_last_epoch["epoch"] == 3
        for anchor, weight in zip(trainer.projection.w_prev, at_last_epoch["weights"]):
            np.testing.assert_array_equal(anchor.numpy(), weight)
    (one, result_one, calls_one), (four, result_four, calls_four) = runs[1], runs[4]
    assert {c for _, c in calls_one} == {1}
    # Epoch 1 (steps 1-5, projection after 3): calls of 3 and 2 steps; never more than 4.
    assert calls_four[:2] == [(0, 3), (3, 2)] and max(c for _, c in calls_four) <= 4
    for a, b in zip(one.model.weights + one.loss.weights + list(one.projection.w_prev),
                    four.model.weights + four.loss.weights + list(four.projection.w_prev)):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert _stable(result_one["projections"]) == _stable(result_four["projections"])
    assert _stable(result_one["history"]) == _stable(result_four["history"])


class SimulatedKill(Exception):
    pass


def test_killed_mid_epoch_and_resumed_projects_at_the_same_steps(tmp_path):
    # One warm-up epoch of 4 steps, then training steps counted from step 4: projections at
    # global steps 7, 10, 13, 16 (10 is inside epoch 3: steps 9-12). No validation needed.
    options = dict(steps_per_epoch=4, max_epochs=4, warmup_epochs=1, validation=False)
    full, full_result, _ = _run(tmp_path, "full", **options)
    assert [e["step"] for e in full_result["projections"]] == [7, 10, 13, 16]
    assert [e["epoch"] for e in full_result["projections"]] == [2, 3, 4, 4]

    def killing_pool(index):
        if index == 2:  # the projection at step 10, in the middle of epoch 3
            raise SimulatedKill()
    with pytest.raises(SimulatedKill):
        _run(tmp_path, "killed", on_pool=killing_pool, **options)
    # A new process: other initial weights; everything comes from the epoch-2 checkpoint.
    resumed, resumed_result, calls = _run(tmp_path, "killed", seed=123, **options)
    assert resumed_result["resumed_from"].endswith("ckpt-2")
    assert calls[0][0] == 8  # replays epoch 3 from its start
    assert _stable(resumed_result["projections"]) == _stable(full_result["projections"])
    assert _stable(resumed_result["history"]) == _stable(full_result["history"])
    for a, b in zip(resumed.model.weights + resumed.loss.weights + list(resumed.projection.w_prev),
                    full.model.weights + full.loss.weights + list(full.projection.w_prev)):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6, rtol=0)

