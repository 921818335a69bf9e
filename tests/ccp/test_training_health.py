"""Collapse detection (issue 10 item 5): a learning rate far too large stops training with the
epoch and the likely cause, keeping the last good checkpoint."""
import numpy as np
import pytest

from ccp.training import health
from test_training import make_model, make_trainer, train_dataset_fn, validation_data


def test_embedding_spread_hand_computed():
    # (3, 4) normalizes to (0.6, 0.8) (norm 5 > 1); (0, 0.5) stays (norm < 1). Centroid
    # (0.3, 0.65); both points are sqrt(0.3^2 + 0.15^2) from it.
    spread = health.embedding_spread(np.array([[3.0, 4.0], [0.0, 0.5]], np.float32))
    assert spread == pytest.approx(np.sqrt(0.09 + 0.0225), rel=1e-12)
    huge = np.full((5, 3), 1e30, np.float32)  # float32 overflow must not fake a collapse
    huge[0, 0] = -1e30
    assert health.embedding_spread(huge) > 0.1
    assert health.embedding_spread(np.ones((4, 3))) == 0.0


def test_collapse_symptoms():
    assert health.collapse_symptom({"loss": 1.08, "grad_norm": 1e-17}).startswith(
        "the gradient norm vanished")
    assert health.collapse_symptom({"loss": 0.0, "grad_norm": 0.0}) is None  # solved, not stuck
    assert health.collapse_symptom({"loss": 1.0, "grad_norm": 0.3}) is None
    assert "coincide" in health.collapse_symptom(
        {"loss": 1.0, "grad_norm": 0.3, "val_embedding_spread": 0.0})


def test_too_large_learning_rate_stops_with_epoch_and_cause(tmp_path):
    trainer = make_trainer(model=make_model(seed=0), learning_rate=1e10, steps_per_epoch=5,
                           max_epochs=4, checkpoint_dir=str(tmp_path / "ckpt"))
    with pytest.raises(health.TrainingCollapsed,
                       match=r"epoch 2: .*vanished.*learning rate too large.*ckpt-1"):
        trainer.fit(train_dataset_fn(), validation_data())
    assert trainer.manager.latest_checkpoint.endswith("ckpt-1")
    assert int(trainer.state.epoch.numpy()) == 1
