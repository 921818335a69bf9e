"""ccp.tracking.ImprovementTracker (hand-worked traces, no TensorFlow variables), the
build_optimization / Trainer construction contract, and the checkpoint mismatch error."""
import math

import keras
import pytest
import tensorflow as tf

from ccp import projection, training
from ccp.tracking import ImprovementTracker, PythonStateCheckpoint
from test_training import make_loss, make_model, make_trainer


def test_tracker_max_mode_with_min_delta_and_patience():
    tracker = ImprovementTracker("max", min_delta=0.1, patience=2)
    improved = [tracker.update(v, step=i) for i, v in enumerate([0.5, 0.55, 0.71, 0.8])]
    assert improved == [True, False, True, False]  # 0.55 <= 0.5 + 0.1; 0.8 <= 0.71 + 0.1
    assert tracker.best == 0.71 and tracker.best_step == 2 and tracker.wait == 1
    assert not tracker.exhausted
    assert tracker.update(float("nan")) is False and tracker.exhausted
    tracker.reset()
    assert tracker.best == -math.inf and tracker.wait == 0 and not tracker.has_best


def test_tracker_min_mode_and_state_round_trip():
    tracker = ImprovementTracker("min", min_delta=0.0)
    assert [tracker.update(v) for v in [3.0, 2.0, 2.0, 2.5, 1.0]] == [True, True, False, False,
                                                                      True]
    assert tracker.best == 1.0 and not tracker.exhausted  # no patience: never exhausted
    copy = ImprovementTracker("min")
    copy.set_state(tracker.get_state())
    assert (copy.best, copy.wait, copy.best_step) == (1.0, 0, None)
    fresh = ImprovementTracker("min")
    fresh.set_state(ImprovementTracker("min").get_state())
    assert fresh.best == math.inf
    assert not any(isinstance(v, tf.Variable) for v in vars(tracker).values())
    with pytest.raises(ValueError, match="mode"):
        ImprovementTracker("up")


def test_python_state_checkpoint_restores_the_tracker(tmp_path):
    tracker = ImprovementTracker(patience=3)
    tracker.update(0.4, step=7)
    tracker.update(0.3)
    checkpoint = tf.train.Checkpoint(tracker=PythonStateCheckpoint(tracker))
    path = checkpoint.save(str(tmp_path / "ckpt"))
    restored = ImprovementTracker(patience=3)
    tf.train.Checkpoint(tracker=PythonStateCheckpoint(restored)).restore(path).assert_consumed()
    assert (restored.best, restored.best_step, restored.wait) == (0.4, 7, 1)


def test_plateau_state_survives_a_checkpoint(tmp_path):
    plateau = training.ReduceLROnPlateau(factor=0.5, patience=2, min_delta=0.0, cooldown=1)
    optimizer = keras.optimizers.Adam(learning_rate=1.0)
    for value in [0.5, 0.4, 0.4]:
        plateau.on_epoch_end(value, optimizer)
    assert float(optimizer.learning_rate.numpy()) == 0.5
    path = tf.train.Checkpoint(p=PythonStateCheckpoint(plateau)).save(str(tmp_path / "c"))
    copy = training.ReduceLROnPlateau(factor=0.5, patience=2, min_delta=0.0, cooldown=1)
    tf.train.Checkpoint(p=PythonStateCheckpoint(copy)).restore(path).assert_consumed()
    assert copy.get_state() == plateau.get_state() and copy.cooldown_counter == 1


def test_build_optimization_contract():
    model, loss = make_model(), make_loss()
    with pytest.raises(ValueError, match="warmup_variables"):
        training.build_optimization(model, loss, warmup_epochs=1)
    optimization = training.build_optimization(model, loss, weight_decay=0, clip_norm=5.0,
                                               clip_value=0)
    assert [type(t).__name__ for t in optimization.gradient_transforms] == ["ClipByGlobalNorm"]
    assert set(optimization.phases) == {"train"} and optimization.plateau is None
    head = model.get_layer("embedding").trainable_variables
    warm = training.build_optimization(model, loss, warmup_epochs=2, warmup_variables=head)
    assert warm.phase_of_epoch(2) == "warmup" and warm.phase_of_epoch(3) == "train"
    assert warm.warmup.variables == list(head) + list(loss.trainable_variables)
    assert warm.warmup.model_training is False


def test_trainer_requires_the_projections_proximal_term():
    model, loss = make_model(), make_loss()
    proj = projection.AlternatingProjection(model.trainable_variables, loss)
    without = training.build_optimization(model, loss)
    with pytest.raises(ValueError, match="proximal term"):
        training.Trainer(model, loss, without, projection=proj)
    with pytest.raises(TypeError, match="ccp.losses"):
        training.Trainer(model, keras.layers.Dense(1), without)


def test_restore_with_another_model_is_a_clear_error(tmp_path):
    trainer = make_trainer(checkpoint_dir=str(tmp_path / "ckpt"))
    trainer.manager.save(1)
    other = make_trainer(model=make_model(batchnorm=False), checkpoint_dir=str(tmp_path / "ckpt"))
    with pytest.raises(ValueError, match="does not match this trainer"):
        other.restore()
    assert trainer.restore().endswith("ckpt-1")
