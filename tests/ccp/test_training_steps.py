"""Many steps per device call (issue 13): the same weights as one step per call, and the NaN
guard still names the epoch and the step and keeps the last good checkpoint."""
import numpy as np
import pytest

from test_training import (make_model, make_trainer, train_dataset_fn, two_cpu_strategy,
                           validation_data)


def _run(steps_per_execution, tmp_path):
    trainer = make_trainer(model=make_model(dropout=True, seed=4), learning_rate=0.02,
                           steps_per_epoch=5, max_epochs=2,
                           steps_per_execution=steps_per_execution,
                           checkpoint_dir=str(tmp_path / f"spe{steps_per_execution}"))
    return trainer, trainer.fit(train_dataset_fn())


def test_steps_per_execution_gives_the_same_weights(tmp_path):
    one, result_one = _run(1, tmp_path)
    three, result_three = _run(3, tmp_path)  # 5 steps an epoch: calls of 3 and 2 steps
    assert result_one["steps"] == result_three["steps"] == 10
    for a, b in zip(one.model.weights + one.loss.weights, three.model.weights + three.loss.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    for r1, r3 in zip(result_one["history"], result_three["history"]):
        assert r3["loss"] == pytest.approx(r1["loss"], rel=1e-12)
        assert r3["grad_norm"] == pytest.approx(r1["grad_norm"], rel=1e-12)


def test_non_finite_step_inside_a_call_names_epoch_and_step(tmp_path):
    trainer = make_trainer(learning_rate=0.01, steps_per_epoch=3, max_epochs=5,
                           steps_per_execution=3, checkpoint_dir=str(tmp_path / "ckpt"))
    with pytest.raises(FloatingPointError, match="epoch 2, step 5"):
        trainer.fit(train_dataset_fn(nan_from=4), validation_data())
    # The call stopped at the first non-finite step (step 5 of 6) and saved nothing after epoch 1.
    assert int(trainer.state.step.numpy()) == 5
    assert trainer.manager.latest_checkpoint.endswith("ckpt-1")


def test_xla_compiled_step_matches_the_plain_step():
    # Plain SGD: with Adam, m / sqrt(v) turns a near-zero gradient's rounding (XLA's and the
    # plain kernels' op orders differ, oneDNN's more so) into a step of any size up to lr, so no
    # tolerance below one step would follow from float32 error. With SGD the weights differ by
    # lr * sum_t (gradient rounding) <= 3 steps * 0.01 * ~100 eps * |g| (|g| <= ~1, a few dozen
    # ops deep) ~ 4e-7, plus the weights' own rounding (eps * |w| ~ 6e-8): atol 1e-6.
    plain = make_trainer(model=make_model(seed=2), learning_rate=0.01, optimizer="sgd")
    compiled = make_trainer(model=make_model(seed=2), learning_rate=0.01, optimizer="sgd",
                            jit_compile=True)
    losses = {}
    for name, trainer in (("plain", plain), ("xla", compiled)):
        iterator = trainer.distribute(train_dataset_fn()(0))
        losses[name] = [float(trainer.train_step(iterator)["loss"]) for _ in range(3)]
    np.testing.assert_allclose(losses["xla"], losses["plain"], rtol=1e-5)
    for a, b in zip(plain.variables["train"], compiled.variables["train"]):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=0, atol=1e-6)


@pytest.mark.slow
def test_two_steps_per_call_on_two_replicas_match_one_replica():
    single = make_trainer(model=make_model(batchnorm=False, seed=1), learning_rate=0.01)
    strategy = two_cpu_strategy()
    with strategy.scope():
        mirrored = make_trainer(model=make_model(batchnorm=False, seed=1), strategy=strategy,
                                learning_rate=0.01, steps_per_execution=2)
    sums, done, first_bad, _ = mirrored.steps["train"].run(
        mirrored.distribute(train_dataset_fn()(0)), 2)
    assert int(done) == 2 and int(first_bad) == -1
    iterator = single.distribute(train_dataset_fn()(0))
    losses = [float(single.train_step(iterator)["loss"]) for _ in range(2)]
    assert float(sums["loss"]) == pytest.approx(sum(losses), rel=1e-5)
    for v1, v2 in zip(single.variables["train"], mirrored.variables["train"]):
        np.testing.assert_allclose(v2.numpy(), v1.numpy(), rtol=1e-5, atol=1e-6)
