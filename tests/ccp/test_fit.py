"""CCP through Keras' own ``model.fit``: MetricModel, ReferenceAdam, ccp.callbacks.

The proof is the float64 reference of ``test_reference_step.py`` (SPEC §5, §6, written from the
SPEC alone): 24 C2-CCP steps with a projection run by ``model.fit`` and the callbacks must match
it to the same tolerances as the Trainer. Then: metrics in ``logs`` for Keras' callbacks, and a
run killed mid-way and resumed by ``keras.callbacks.BackupAndRestore`` ends with the numbers of
an uninterrupted run (proxies, ``w_prev``, ``lambda_t`` and the schedule's counters included).
"""
import keras
import numpy as np
import pytest
import tensorflow as tf

import ccp
from test_reference_step import (
    B, CLASSES, D, EPOCH_VALUES, EPOCHS, IN, K, POOL, SETTINGS, STEPS_PER_EPOCH, ReferenceRun,
    _close, build_library, library_variables)


def _optimizer_state(model, loss, optimizer):
    variables = library_variables(model, loss)
    # Keras keeps Adam's slots in lists indexed by the variable (no public accessor).
    slots = {k: optimizer._get_variable_index(v) for k, v in variables.items()}
    return ({k: optimizer._momentums[i].numpy() for k, i in slots.items()},
            {k: optimizer._velocities[i].numpy() for k, i in slots.items()})


class _ScriptedValidation(keras.callbacks.Callback):
    """Writes the scripted validation MAP@R of each epoch into ``logs`` (as
    RetrievalEvaluation would), so the schedule's decisions are known in advance."""

    def on_epoch_end(self, epoch, logs=None):
        logs["val_map_at_r"] = EPOCH_VALUES[epoch]


class _CompareWithReference(keras.callbacks.Callback):
    """After every step: the reference runs the same batch; weights, Adam moments and BatchNorm
    statistics must agree. After every epoch: the reference acts on the projection's decision."""

    def __init__(self, reference, images, labels, pools, projection_callback, loss):
        super().__init__()
        self.reference, self.images, self.labels = reference, images, labels
        self.pools, self.projection_callback, self.loss = pools, projection_callback, loss
        self.step, self.projections = 0, 0

    def on_train_batch_end(self, batch, logs=None):
        ref, step = self.reference, self.step
        ref.step(self.images[step].astype(np.float64), self.labels[step])
        self.step = step = step + 1
        embedder = self.model.embedder
        optimizer = self.model.optimizer
        assert int(optimizer.iterations.numpy()) == ref.iterations == step
        weights = {k: v.numpy() for k, v in library_variables(embedder, self.loss).items()}
        m, v = _optimizer_state(embedder, self.loss, optimizer)
        for key in weights:
            _close(weights[key], ref.params[key], key, step, 2e-5)
            _close(m[key], ref.m[key], f"Adam m of {key}", step, 2e-4)
            _close(v[key], ref.v[key], f"Adam v of {key}", step, 2e-4)
        bn = embedder.get_layer("bn")
        for got, want in zip((bn.moving_mean.numpy(), bn.moving_variance.numpy()), ref.moving):
            _close(got, want, "BatchNorm moving statistics", step, 2e-5)

    def on_epoch_end(self, epoch, logs=None):
        action = self.projection_callback.last_decision.action
        if action == "new_best":
            self.reference.remember_best()
        elif action == "project":
            self.projections += 1
            self.reference.project(self.pools[self.projections])
            projection = self.model.projection
            assert float(projection.lambda_t.numpy()) == pytest.approx(self.reference.lambda_t)
            _close(self.loss.proxies.numpy(), self.reference.params["proxies"],
                   "projected proxies", self.step, 1e-6)
            variables = library_variables(self.model.embedder, self.loss)
            for key in self.reference.NETWORK:
                _close(projection.anchor.anchor_for(variables[key]).numpy(),
                       self.reference.w_prev[key], f"w_prev of {key}", self.step, 2e-5)


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_fit_reproduces_the_reference_steps_and_projection(name):
    s = SETTINGS[name]
    rng = np.random.default_rng(31)  # the same draws as test_reference_step
    params = {"w1": rng.normal(0, 0.6, (IN, 5)), "b1": rng.normal(0, 0.1, 5),
              "gamma": rng.uniform(0.8, 1.2, 5), "beta": rng.normal(0, 0.1, 5),
              "w2": rng.normal(0, 0.5, (5, D))}
    params = {k: v.astype(np.float32) for k, v in params.items()}
    proxies = rng.normal(0, 0.6, (CLASSES, K, D)).astype(np.float32)
    steps = STEPS_PER_EPOCH * EPOCHS
    images = rng.normal(0, 1.0, (steps, B, IN)).astype(np.float32)
    labels = np.tile(np.repeat(np.arange(CLASSES), B // CLASSES), (steps, 1)).astype(np.int32)
    pools = {i: rng.normal(0, 0.6, (CLASSES, POOL, D)).astype(np.float32) for i in range(3)}

    # The same pieces as the Trainer's test builds (model, loss, projection), minus the Trainer.
    embedder, loss, projection, _ = build_library(params, proxies, s)
    projection.proxies_initialized.assign(True)  # the reference starts from these proxies
    model = ccp.models.MetricModel(embedder, loss, projection=projection)
    model.compile(optimizer=ccp.training.ReferenceAdam(
        s["lr"], epsilon=1e-7, weight_decay=s["weight_decay"], clip_norm=s["clip_norm"],
        clip_value=s["clip_value"]))
    projecting = ccp.callbacks.AlternatingProjectionCallback(
        proxy_pool_fn=lambda model, index: pools[index])
    compare = _CompareWithReference(ReferenceRun(params, proxies, s), images, labels, pools,
                                    projecting, loss)
    dataset = tf.data.Dataset.from_tensor_slices((images, labels))
    model.fit(dataset, epochs=EPOCHS, steps_per_epoch=STEPS_PER_EPOCH, verbose=0, shuffle=False,
              callbacks=[_ScriptedValidation(), projecting, compare])
    assert compare.step == steps
    assert compare.projections >= 1 and compare.reference.lambda_t > 0


# ----------------------------------------------------------------------------------------------
# Metrics in logs, and resuming with keras.callbacks.BackupAndRestore.
# ----------------------------------------------------------------------------------------------
from test_training import (  # noqa: E402
    CENTERS, FEATURES, NUM_CLASSES, batch_at, make_loss, make_model, validation_data)


def _pool_dataset(index):
    """3 samples of every class (one-per-class rounds), a pure function of the draw index."""
    rng = np.random.default_rng(700 + index)
    labels = np.tile(np.arange(NUM_CLASSES), 3).astype(np.int32)
    images = CENTERS[labels] + rng.normal(size=(len(labels), FEATURES)).astype(np.float32)
    return tf.data.Dataset.from_tensor_slices((images, labels)).batch(8)


def _train_dataset():
    """Four fixed batches: every epoch sees the same ones (a resumed epoch included)."""
    return tf.data.Dataset.range(4).map(batch_at)


def _ccp_model():
    embedder, loss = make_model(seed=5), make_loss(seed=6)
    projection = ccp.projection.AlternatingProjection(
        embedder.trainable_variables, proxy_owner=loss, lambda_0=0.5, patience=1, pool_size=3)
    model = ccp.models.MetricModel(embedder, loss, projection=projection)
    model.compile(optimizer=ccp.training.ReferenceAdam(0.02))
    return model


class _Kill(keras.callbacks.Callback):
    """Stands for a killed process: raises at the end of 0-based epoch ``epoch``."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise KeyboardInterrupt(f"killed after epoch {epoch + 1}")


def _fit(model, backup_dir, epochs, extra=()):
    callbacks = [ccp.callbacks.RetrievalEvaluation(validation_data()),
                 ccp.callbacks.AlternatingProjectionCallback(proxy_pool=_pool_dataset),
                 keras.callbacks.BackupAndRestore(backup_dir),  # last: saves the epoch's state
                 *extra]
    return model.fit(_train_dataset(), epochs=epochs, verbose=0, shuffle=False,
                     callbacks=callbacks)


def _ccp_state(model):
    projection = model.projection
    return ([v.numpy() for v in model.weights + projection.state_variables()],
            projection.get_state(), int(model.optimizer.iterations.numpy()))


def test_retrieval_metrics_reach_keras_callbacks():
    model = _ccp_model()
    stop = keras.callbacks.EarlyStopping(monitor="val_map_at_r", mode="max", patience=1)
    plateau = keras.callbacks.ReduceLROnPlateau(monitor="val_map_at_r", mode="max", patience=1)
    history = model.fit(_train_dataset(), epochs=3, verbose=0, shuffle=False, callbacks=[
        ccp.callbacks.RetrievalEvaluation(validation_data()),
        ccp.callbacks.AlternatingProjectionCallback(proxy_pool=_pool_dataset), stop, plateau])
    for key in ("val_map_at_r", "val_r_precision", "val_precision_at_1", "val_recall_at_1",
                "ccp_instance", "ccp_lambda_t"):
        assert key in history.history, sorted(history.history)
    values = history.history["val_map_at_r"]
    gallery = ccp.callbacks.RetrievalEvaluation(validation_data(), reference_data=validation_data())
    gallery.set_model(model)
    # every query also in the gallery: its own image is its first neighbour
    assert gallery.evaluate()["precision_at_1"] == 1.0
    assert all(0.0 <= v <= 1.0 for v in values)
    assert bool(model.projection.proxies_initialized.numpy())
    with pytest.raises(ValueError, match="RetrievalEvaluation.*before"):
        _ccp_model().fit(_train_dataset(), epochs=1, verbose=0, shuffle=False, callbacks=[
            ccp.callbacks.AlternatingProjectionCallback(proxy_pool=_pool_dataset)])


def test_backup_and_restore_resumes_to_the_numbers_of_an_uninterrupted_run(tmp_path):
    whole = _ccp_model()
    _fit(whole, str(tmp_path / "whole"), epochs=6)
    want = _ccp_state(whole)
    assert want[1]["instance"] >= 2, want[1]  # projections before and after the kill

    killed = _ccp_model()
    with pytest.raises(KeyboardInterrupt):
        _fit(killed, str(tmp_path / "resumed"), epochs=6, extra=[_Kill(epoch=2)])
    assert 1 <= killed.projection.get_state()["instance"] < want[1]["instance"]
    resumed = _ccp_model()  # a new process: new objects, state from the backup only
    history = _fit(resumed, str(tmp_path / "resumed"), epochs=6)
    assert len(history.epoch) == 3  # epochs 4-6
    got = _ccp_state(resumed)
    assert got[1] == want[1] and got[2] == want[2] == 24
    for a, b in zip(got[0], want[0]):
        np.testing.assert_array_equal(a, b)


def test_metric_model_refuses_another_loss_and_a_projection_without_its_optimizer():
    model = _ccp_model()
    with pytest.raises(ValueError, match="no other loss"):
        model.compile(optimizer="adam", loss=ccp.losses.ContrastiveLoss())
    with pytest.raises(ValueError, match="ReferenceAdam"):
        model.compile(optimizer="adam")
    with pytest.raises(ValueError, match="attach"):  # ReferenceAdam outside a MetricModel
        plain = make_model()
        optimizer = ccp.training.ReferenceAdam(0.01)
        optimizer.apply_gradients([(tf.zeros_like(v), v) for v in plain.trainable_variables])


def test_projection_every_steps_on_the_fit_path():
    embedder, loss = make_model(seed=5), make_loss(seed=6)
    projection = ccp.projection.AlternatingProjection(
        embedder.trainable_variables, proxy_owner=loss, lambda_0=0.5, pool_size=3,
        projection_every_steps=3)
    model = ccp.models.MetricModel(embedder, loss, projection=projection)
    model.compile(optimizer=ccp.training.ReferenceAdam(0.02))
    model.fit(_train_dataset(), epochs=2, verbose=0, shuffle=False, callbacks=[
        ccp.callbacks.AlternatingProjectionCallback(proxy_pool=_pool_dataset)])
    # 8 steps: projections after steps 3 and 6, each with lambda_0.
    assert projection.get_state()["instance"] == 2
    assert float(projection.lambda_t.numpy()) == pytest.approx(0.5)


class _SubclassedEmbedder(keras.Model):
    """A subclassed embedder (no functional graph): Dense -> ReLU -> Dense."""

    def __init__(self):
        super().__init__()
        self.hidden = keras.layers.Dense(16, activation="relu")
        self.head = keras.layers.Dense(4)

    def call(self, inputs, training=None):
        return self.head(self.hidden(inputs))


@pytest.mark.parametrize("make_loss", [
    lambda: ccp.losses.ProxyAnchorLoss(NUM_CLASSES, 4),
    lambda: ccp.losses.ProxyNCALoss(NUM_CLASSES, 4),
    lambda: ccp.losses.SoftTripleLoss(NUM_CLASSES, 4, centers_per_class=2),
], ids=["proxy_anchor", "proxy_nca", "soft_triple"])
def test_proxy_losses_train_their_proxies_through_fit(make_loss):
    embedder, loss = _SubclassedEmbedder(), make_loss()
    embedder(np.zeros((1, FEATURES), np.float32))
    model = ccp.models.MetricModel(embedder, loss)
    assert all(any(v is w for w in model.trainable_variables) for v in loss.proxy_variables)
    optimizer = ccp.training.ReferenceAdam(0.01, proxy_lr_multiplier=100.0)
    model.compile(optimizer=optimizer)
    assert optimizer.lr_multiplier(loss.proxy_variables[0]) == 100.0
    before = [v.numpy().copy() for v in loss.proxy_variables]
    history = model.fit(_train_dataset(), epochs=1, verbose=0, shuffle=False)
    assert np.isfinite(history.history["loss"]).all()
    for old, variable in zip(before, loss.proxy_variables):
        assert np.abs(variable.numpy() - old).max() > 1e-3  # the 100x step moved them


def test_metric_model_round_trips_through_keras_saving(tmp_path):
    embedder = make_model(seed=3)
    model = ccp.models.MetricModel(embedder, make_loss(seed=4))
    model.compile(optimizer=ccp.training.ReferenceAdam(0.01))
    model.fit(_train_dataset(), epochs=1, verbose=0, shuffle=False)
    path = str(tmp_path / "metric_model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, compile=False)
    assert isinstance(loaded, ccp.models.MetricModel)
    x = batch_at(0)[0]
    np.testing.assert_allclose(loaded(x), model(x), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(loaded.metric_loss.proxies.numpy(),
                                  model.metric_loss.proxies.numpy())
    ccp_model = _ccp_model()  # with a projection: its state is in the weights, not the config
    ccp_model.fit(_train_dataset(), epochs=1, verbose=0, shuffle=False, callbacks=[
        ccp.callbacks.RetrievalEvaluation(validation_data()),
        ccp.callbacks.AlternatingProjectionCallback(proxy_pool=_pool_dataset)])
    ccp_model.save(str(tmp_path / "ccp_model.keras"))
    reloaded = keras.saving.load_model(str(tmp_path / "ccp_model.keras"), compile=False)
    assert reloaded.projection is None
    np.testing.assert_allclose(reloaded(x), ccp_model(x), rtol=1e-6, atol=1e-6)


def test_a_collapsed_model_stops_before_the_projection():
    """All-zero weights map every image to one embedding: the spread is 0."""
    model = _ccp_model()
    for variable in model.embedder.trainable_variables:
        variable.assign(np.zeros(variable.shape, np.float32))
    model.compile(optimizer=ccp.training.ReferenceAdam(1e-12))
    with pytest.raises(ccp.training.health.TrainingCollapsed, match="coincide"):
        model.fit(_train_dataset(), epochs=2, verbose=0, shuffle=False, callbacks=[
            ccp.callbacks.RetrievalEvaluation(validation_data()),
            ccp.callbacks.AlternatingProjectionCallback(proxy_pool=_pool_dataset)])
    assert model.projection.get_state()["instance"] == 0


@pytest.mark.slow
def test_fit_on_two_replicas_equals_one_replica():
    """Mirrored fit (2 logical CPUs): the pair loss sees the global batch (all-gather) and the
    chain sees the summed gradient, so the weights match a single-device fit."""
    from test_training import two_cpu_strategy

    def train(strategy):
        with strategy.scope():
            embedder, loss = make_model(batchnorm=False, seed=7), make_loss(seed=8)
            model = ccp.models.MetricModel(embedder, loss)
            # clip_norm small enough to act: it must see the global gradient
            model.compile(optimizer=ccp.training.ReferenceAdam(0.01, clip_norm=0.05))
        model.fit(_train_dataset(), epochs=1, verbose=0, shuffle=False)
        return [v.numpy() for v in model.trainable_variables]

    single = train(tf.distribute.get_strategy())
    mirrored = train(two_cpu_strategy())
    for a, b in zip(single, mirrored):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


def test_reference_adam_config_round_trip():
    optimizer = ccp.training.ReferenceAdam(1e-3, weight_decay=0.3, clip_norm=2.0, clip_value=1.0,
                                           proxy_lr_multiplier=5.0)
    copy = ccp.training.ReferenceAdam.from_config(optimizer.get_config())
    assert copy.chain_options == {"weight_decay": 0.3, "clip_norm": 2.0, "clip_value": 1.0}
    assert copy.proxy_lr_multiplier == 5.0
    assert copy.weight_decay is None  # Keras' decoupled decay stays off: the chain decays
    with pytest.raises(ValueError, match="clip_norm"):
        ccp.training.ReferenceAdam(1e-3, global_clipnorm=1.0)
