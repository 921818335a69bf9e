"""The reference's other optimizers (with lr multipliers) and warm-up variants vs numpy."""
import numpy as np
import pytest
import tensorflow as tf

from ccp import defaults, training
from ccp.training import optimizer_registry
from test_training import make_loss, make_model, train_dataset_fn

G1, G2 = np.array([0.5, -1.0, 2.0]), np.array([-0.25, 0.75, 1.0])
W0 = np.array([1.0, 2.0, -3.0])


def _run(optimizer, grads, multiplier=1.0):
    w = tf.Variable(W0, dtype=tf.float64)
    optimizer.build([w])
    if multiplier != 1.0:
        optimizer.set_lr_multiplier([w], multiplier)
    for g in grads:
        optimizer.apply_gradients([(tf.constant(g, tf.float64), w)])
    return w.numpy()


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_momentum_nesterov_vs_numpy(nesterov):
    lr, m = 0.125, 0.875  # exact in float32 (keras keeps the learning rate in float32)
    opt = optimizer_registry.create("sgd", lr, {"momentum": m, "nesterov": nesterov})
    w, v = W0.copy(), np.zeros(3)
    for g in (G1, G2):  # Sutskever momentum; Nesterov's look-ahead form
        v = m * v - lr * g
        w = w + (m * v - lr * g if nesterov else v)
    np.testing.assert_allclose(_run(opt, (G1, G2)), w, rtol=1e-12)


def test_rmsprop_vs_numpy_and_multiplier():
    lr, rho = 0.0078125, 0.9
    opt = optimizer_registry.create("rmsprop", lr)  # reference defaults: rho 0.9, momentum 0
    w, a = W0.copy(), np.zeros(3)
    for g in (G1, G2):
        a = rho * a + (1 - rho) * g * g
        w = w - lr * g / np.sqrt(a + 1e-7)  # keras: epsilon inside the root
    np.testing.assert_allclose(_run(opt, (G1, G2)), w, rtol=1e-10)
    # the multiplier scales the step: plain SGD steps are exactly 3x
    step = W0 - _run(optimizer_registry.create("sgd", 0.125), (G1,), multiplier=3.0)
    np.testing.assert_allclose(step, 3 * 0.125 * G1, rtol=1e-12)


def test_registry_names_and_defaults():
    assert sorted(optimizer_registry.OPTIMIZERS) == [
        "adadelta", "adagrad", "adam", "adamax", "ftrl", "nadam", "rmsprop", "sgd"]
    sgd = optimizer_registry.create("sgd", 0.1)
    assert (sgd.momentum, sgd.nesterov) == (defaults.SGD_MOMENTUM, defaults.SGD_NESTEROV)
    rms = optimizer_registry.create("rmsprop", 0.1)
    assert (rms.rho, rms.momentum) == (0.9, 0.0)
    for name in optimizer_registry.OPTIMIZERS:  # each applies a multiplied step
        assert np.all(np.isfinite(_run(optimizer_registry.create(name, 0.01), (G1,), 2.0)))
    with pytest.raises(ValueError, match="unknown optimizer 'lamb'"):
        optimizer_registry.create("lamb", 0.1)


def test_build_optimization_optimizers_and_warmup_variants():
    model, loss = make_model(), make_loss()
    sgd = training.build_optimization(model, loss, optimizer="sgd", momentum=0.9, nesterov=True)
    inner = training.optimizers.inner_optimizer(sgd.train.optimizer)
    assert isinstance(inner, optimizer_registry.SGDLRM) and inner.nesterov
    with pytest.raises(ValueError, match="nesterov=True"):
        training.build_optimization(model, loss, nesterov=True)
    with pytest.raises(ValueError, match="momentum=0.5"):
        training.build_optimization(model, loss, optimizer="adagrad", momentum=0.5)
    warm = training.build_optimization(model, loss, learning_rate=0.01, warmup_epochs=0.5,
                                       warmup_all_layers=True, warmup_lr_multiplier=10.0)
    assert warm.warmup.variables == warm.train.variables and warm.warmup.model_training
    lr = training.optimizers.inner_optimizer(warm.warmup.optimizer).learning_rate
    assert float(lr.numpy()) == pytest.approx(0.1)
    assert warm.phase_of_epoch(1) == "warmup" and warm.phase_of_epoch(2) == "train"
    assert [warm.steps_in_epoch(e, 25) for e in (1, 2)] == [12, 25]  # round(12.5) = 12
    whole = training.build_optimization(model, loss, warmup_epochs=2.7,
                                        warmup_variables=model.trainable_variables[-1:])
    assert whole.warmup_epochs == 2 and whole.steps_in_epoch(1, 25) == 25


@pytest.mark.slow
def test_fractional_warmup_runs_a_short_first_epoch():
    model, loss = make_model(), make_loss()
    optimization = training.build_optimization(
        model, loss, learning_rate=0.05, warmup_epochs=0.5,
        warmup_variables=model.get_layer("embedding").trainable_variables)
    trainer = training.Trainer(model, loss, optimization, steps_per_epoch=4, max_epochs=1,
                               progress_bar=False)
    history = trainer.fit(train_dataset_fn(), None)["history"]
    assert [(h["phase"], h["step"]) for h in history] == [("warmup", 2)]
