"""ccp.training: gradient transforms, optimizer, schedules, the Trainer loop, checkpoints,
NaN handling, distribution and mixed precision. Tiny Dense models on synthetic clustered data."""
import functools
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import ccp
from ccp import projection, training

NUM_CLASSES, FEATURES, EMBEDDING = 6, 8, 4


# ----------------------------------------------------------------------------------------------
# Fixtures: the real C2-CCP loss, a tiny model, synthetic clustered data.
# ----------------------------------------------------------------------------------------------


def make_loss(seed=3):
    """C2-CCP with 2 proxies per class (ccp.losses, SPEC §4)."""
    return ccp.losses.CCPLoss(ccp.losses.ContrastiveLoss(pos_margin=0.0, neg_margin=0.8),
                              NUM_CLASSES, EMBEDDING, proxies_per_class=2, seed=seed)


def make_model(batchnorm=True, dropout=False, seed=0):
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((FEATURES,)), keras.layers.Dense(16, activation="relu", name="hidden")]
    if batchnorm:
        layers.append(keras.layers.BatchNormalization(name="bn"))
    if dropout:
        layers.append(keras.layers.Dropout(0.2, seed=seed))
    layers.append(keras.layers.Dense(EMBEDDING, name="embedding"))
    return keras.Sequential(layers)


CENTERS = np.random.default_rng(42).normal(size=(NUM_CLASSES, FEATURES)).astype(np.float32) * 2


def batch_at(step, classes_per_batch=3, per_class=4, nan_from=None):
    """The step-deterministic batch of ``step``: 3 classes x 4 noisy samples of their centers."""
    seed = tf.stack([tf.cast(step, tf.int32), 7])
    classes = tf.argsort(tf.random.stateless_uniform([NUM_CLASSES], seed))[:classes_per_batch]
    labels = tf.repeat(classes, per_class)
    noise = tf.random.stateless_normal([classes_per_batch * per_class, FEATURES], seed + 1)
    x = tf.gather(tf.constant(CENTERS), labels) + noise
    if nan_from is not None:
        x = tf.where(tf.cast(step, tf.int64) >= nan_from, x * np.nan, x)
    return x, tf.cast(labels, tf.int32)


def train_dataset_fn(nan_from=None):
    def make(start_step):
        steps = tf.data.Dataset.range(start_step, 1 << 40)
        return steps.map(lambda s: batch_at(s, nan_from=nan_from))
    return make


def validation_data(n_per_class=8):
    rng = np.random.default_rng(9)
    labels = np.repeat(np.arange(NUM_CLASSES), n_per_class).astype(np.int32)
    x = CENTERS[labels] + rng.normal(size=(len(labels), FEATURES)).astype(np.float32)
    return tf.data.Dataset.from_tensor_slices((x, labels)).batch(16)


def pool_fn(model, index):
    """Raw pool embeddings [C, 3, D] of fixed images, embedded by the current model."""
    rng = np.random.default_rng(500 + index)
    images = CENTERS[:, None, :] + rng.normal(size=(NUM_CLASSES, 3, FEATURES)).astype(np.float32)
    emb = model(images.reshape(-1, FEATURES), training=False)
    return np.asarray(emb).reshape(NUM_CLASSES, 3, EMBEDDING)


OPTIMIZATION_ARGS = {"learning_rate", "lr_schedule", "lr_decay_rate", "lr_decay_steps",
                     "lr_plateau_patience", "lr_plateau_cooldown", "lr_plateau_min_delta",
                     "min_learning_rate", "weight_decay", "clip_norm", "clip_value",
                     "warmup_epochs", "proxy_lr_multiplier", "optimizer"}


def make_trainer(model=None, loss=None, projection_args=None, strategy=None, **kwargs):
    """A Trainer built as a caller builds one: projection, optimization, then the loop.

    ``projection_args``: None (no CCP) or the AlternatingProjection keyword arguments (the loss
    is the declared proxy owner). Optimizer keywords go to ``build_optimization``; a warm-up
    trains the layer "embedding" (declared here, by the test).
    """
    model = model or make_model()
    loss = loss or make_loss()
    optimization_args = {k: kwargs.pop(k) for k in list(kwargs) if k in OPTIMIZATION_ARGS}
    if optimization_args.get("warmup_epochs"):
        optimization_args["warmup_variables"] = model.get_layer("embedding").trainable_variables
    kwargs.setdefault("progress_bar", False)
    with (strategy or tf.distribute.get_strategy()).scope():
        proj = None
        if projection_args is not None:
            proj = projection.AlternatingProjection(model.trainable_variables, loss,
                                                    **projection_args)
        optimization = training.build_optimization(model, loss, projection=proj,
                                                   **optimization_args)
        return training.Trainer(model, loss, optimization, strategy=strategy, projection=proj,
                                **kwargs)


@functools.lru_cache(maxsize=None)
def two_cpu_strategy():
    """One MirroredStrategy over the two logical CPUs for every test of the process: separate
    instances would hand out the same collective instance keys for different collectives."""
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


def gradients(trainer, images, labels):
    """Loss terms and transformed gradients of one global batch through the train step."""
    batch = training.single_batch(trainer.strategy, images, labels)
    return trainer.steps["train"].gradients(*batch)


# ----------------------------------------------------------------------------------------------
# Gradient transforms.
# ----------------------------------------------------------------------------------------------


def test_weight_decay_skips_batchnorm_variables():
    model = make_model()
    loss = make_loss()
    bn = training.batchnorm_variables(model)
    assert {v.path.split("/")[-1] for v in bn} == {"gamma", "beta", "moving_mean",
                                                   "moving_variance"}
    decay = training.default_gradient_transforms(model, loss, weight_decay=0.1, clip_norm=0,
                                                 clip_value=0)
    assert len(decay) == 1 and isinstance(decay[0], training.WeightDecay)
    variables = list(model.trainable_variables) + list(loss.trainable_variables)
    out = decay[0]([tf.zeros_like(v) for v in variables], variables)
    bn_ids = {id(v) for v in bn}
    checked_bn = 0
    for g, v in zip(out, variables):
        if id(v) in bn_ids:
            checked_bn += 1
            np.testing.assert_array_equal(g.numpy(), 0.0)
        else:  # dense kernels/biases and proxies: + rate * w
            np.testing.assert_allclose(g.numpy(), 0.1 * v.numpy(), rtol=1e-6)
    assert checked_bn == 2  # gamma and beta are the trainable BN variables


def test_clip_order_norm_then_value():
    w = [tf.Variable([1.0, -1.0]), tf.Variable([[2.0]])]
    grads = [tf.constant([30.0, -1.0]), tf.constant([[40.0]])]
    chain = [training.WeightDecay(0.5, w), training.ClipByGlobalNorm(10.0),
             training.ClipByValue(5.0)]
    out = training.apply_transforms(chain, grads, w)
    g1 = [np.array([30.5, -1.5]), np.array([[41.0]])]
    norm = np.sqrt(sum((g ** 2).sum() for g in g1))
    g2 = [g * 10.0 / norm for g in g1]
    g3 = [np.clip(g, -5, 5) for g in g2]
    for got, want in zip(out, g3):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5)
    # The other order gives a different result: the test pins the order.
    swapped = training.apply_transforms([chain[0], chain[2], chain[1]], grads, w)
    assert not np.allclose(swapped[0].numpy(), g3[0])


def test_trainer_chain_order_and_none_gradients():
    trainer = make_trainer(projection_args={})
    kinds = [type(t).__name__ for t in trainer.gradient_transforms]
    assert kinds == ["ProximalTerm", "WeightDecay", "ClipByGlobalNorm", "ClipByValue"]
    out = training.apply_transforms(trainer.gradient_transforms, [None, tf.ones([2])],
                                    [tf.Variable([0.0]), tf.Variable([0.0, 0.0])])
    assert out[0] is None


def test_adam_lr_multiplier_is_a_step_size_multiplier():
    a1, b1 = tf.Variable([1.0, 2.0]), tf.Variable([3.0])
    a2, b2 = tf.Variable([1.0, 2.0]), tf.Variable([3.0])
    lrm = training.AdamLRM(learning_rate=0.01)
    lrm.build([a1, b1])
    lrm.set_lr_multiplier([a1], 100.0)
    plain_a = keras.optimizers.Adam(learning_rate=1.0, epsilon=1e-7)
    plain_b = keras.optimizers.Adam(learning_rate=0.01, epsilon=1e-7)
    for step in range(3):
        ga, gb = tf.constant([0.3, -0.1 * (step + 1)]), tf.constant([0.7])
        lrm.apply_gradients([(ga, a1), (gb, b1)])
        plain_a.apply_gradients([(ga, a2)])
        plain_b.apply_gradients([(gb, b2)])
    np.testing.assert_allclose(a1.numpy(), a2.numpy(), rtol=1e-6)
    np.testing.assert_allclose(b1.numpy(), b2.numpy(), rtol=1e-6)
    assert lrm.lr_multiplier(a1) == 100.0 and lrm.lr_multiplier(b1) == 1.0


def test_proximal_term_in_trainer_gradients():
    images, labels = batch_at(0)
    base = make_trainer(model=make_model(batchnorm=False), weight_decay=0, clip_norm=0,
                        clip_value=0)
    model = make_model(batchnorm=False)
    trainer = make_trainer(model=model, projection_args={}, weight_decay=0, clip_norm=0,
                           clip_value=0)
    proj = trainer.projection
    rng = np.random.default_rng(0)
    for anchor in proj.w_prev:
        anchor.assign(rng.normal(size=anchor.shape).astype(np.float32))
    proj.lambda_t.assign(0.25)
    terms0, grads0 = gradients(base, images, labels)
    terms1, grads1 = gradients(trainer, images, labels)
    assert terms0["loss"] == pytest.approx(terms1["loss"], rel=1e-6)
    num_model = len(trainer.model_variables)
    for i, (g0, g1) in enumerate(zip(grads0, grads1)):
        if i < num_model:
            v, anchor = trainer.model_variables[i], proj.w_prev[i]
            np.testing.assert_allclose(g1, g0 + 0.25 * (v.numpy() - anchor.numpy()),
                                       rtol=1e-5, atol=1e-7)
        else:  # proxies: untouched by the proximal term
            np.testing.assert_allclose(g1, g0, rtol=1e-6)


# ----------------------------------------------------------------------------------------------
# Schedules.
# ----------------------------------------------------------------------------------------------


def test_reduce_on_plateau_follows_keras_semantics():
    trace = [0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.505, 0.6]
    settings = dict(factor=0.5, patience=2, min_delta=0.01, cooldown=1, min_lr=0.2)
    optimizer = keras.optimizers.Adam(learning_rate=1.0)
    plateau = training.ReduceLROnPlateau(**settings)
    lrs = []
    for value in trace:
        plateau.on_epoch_end(value, optimizer)
        lrs.append(float(optimizer.learning_rate.numpy()))
    # Oracle: Keras' own callback in mode "max" on the same trace.
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=1.0), loss="mse")
    callback = keras.callbacks.ReduceLROnPlateau(monitor="m", mode="max", verbose=0, **settings)
    callback.set_model(model)
    callback.on_train_begin()
    expected = []
    for epoch, value in enumerate(trace):
        callback.on_epoch_end(epoch, {"m": value})
        expected.append(float(model.optimizer.learning_rate.numpy()))
    np.testing.assert_allclose(lrs, expected, rtol=1e-6)
    assert len(set(lrs)) >= 3 and min(lrs) == pytest.approx(0.2)


def test_exponential_schedule_on_steps():
    trainer = make_trainer(lr_schedule="exponential", learning_rate=0.1, lr_decay_rate=0.5,
                           lr_decay_steps=2)
    iterator = trainer.distribute(train_dataset_fn()(0))
    rates = []
    for _ in range(5):
        rates.append(trainer.learning_rate())
        trainer.train_step(iterator)
    np.testing.assert_allclose(rates, [0.1, 0.1, 0.05, 0.05, 0.025], rtol=1e-6)
    with pytest.raises(ValueError, match="constant"):
        make_trainer(lr_schedule="cosine")


# ----------------------------------------------------------------------------------------------
# The loop.
# ----------------------------------------------------------------------------------------------


def test_short_training_run_learns(tmp_path):
    trainer = make_trainer(learning_rate=0.01, steps_per_epoch=15, max_epochs=4,
                           log_dir=str(tmp_path / "logs"), recall_at=(1, 2))
    untrained = trainer.evaluate(validation_data())["map_at_r"]
    result = trainer.fit(train_dataset_fn(), validation_data())
    history = result["history"]
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]
    assert history[-1]["loss"] < history[0]["loss"]
    assert result["best_metric"] > untrained + 0.05
    assert result["stop_reason"] == "max_epochs" and result["steps"] == 60
    # The best weights are restored at the end.
    assert trainer.evaluate(validation_data())["map_at_r"] == pytest.approx(result["best_metric"])
    with open(tmp_path / "logs" / training.EVENTS_FILE) as handle:
        records = [json.loads(line) for line in handle]
    epochs = [r for r in records if r["event"] == "epoch"]
    assert len(epochs) == 4 and {"loss", "pair", "proxy", "map_at_r", "lr",
                                 "val_recall_at_2"} <= set(epochs[0])
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(tmp_path / "logs"))


def test_early_stopping_restores_best_weights():
    trainer = make_trainer(learning_rate=0.05, steps_per_epoch=3, max_epochs=30, patience=2,
                           min_delta=10.0)  # nothing after epoch 1 counts as an improvement
    snapshots = {}
    result = trainer.fit(train_dataset_fn(), validation_data(), callbacks=[
        lambda t, r: snapshots.__setitem__(r["epoch"], t.model.get_weights())])
    assert result["stop_reason"] == "early_stopping"
    assert result["epochs"] == 3 and result["best_epoch"] == 1
    for got, want in zip(trainer.model.get_weights(), snapshots[1]):
        np.testing.assert_array_equal(got, want)


def test_warmup_trains_only_the_embedding_layer_and_loss_variables():
    model = make_model()
    loss = make_loss()
    trainer = make_trainer(model=model, loss=loss, learning_rate=0.05, steps_per_epoch=3,
                           max_epochs=1, warmup_epochs=1)
    hidden = [w.copy() for w in model.get_layer("hidden").get_weights()]
    bn = [w.copy() for w in model.get_layer("bn").get_weights()]
    head = [w.copy() for w in model.get_layer("embedding").get_weights()]
    proxies = loss.proxies.numpy().copy()
    result = trainer.fit(train_dataset_fn(), None)
    assert result["history"][0]["phase"] == "warmup"
    frozen = model.get_layer("hidden").get_weights() + model.get_layer("bn").get_weights()
    for got, want in zip(frozen, hidden + bn):
        np.testing.assert_array_equal(got, want)  # backbone frozen, BN statistics too
    assert not np.allclose(model.get_layer("embedding").get_weights()[0], head[0])
    assert not np.allclose(loss.proxies.numpy(), proxies)


def _ccp_run(tmp_path, name, max_epochs, seed=0, callbacks=()):
    model = make_model(dropout=True, seed=seed)
    loss = make_loss()
    trainer = make_trainer(model=model, loss=loss, projection_args=dict(
                               lambda_0=0.05, patience=1, min_delta=1.0, pool_size=3),
                           learning_rate=0.02,
                           steps_per_epoch=4, max_epochs=max_epochs, warmup_epochs=1,
                           lr_schedule="plateau", lr_plateau_patience=1, lr_plateau_cooldown=0,
                           lr_plateau_min_delta=10.0, min_learning_rate=1e-4,
                           checkpoint_dir=str(tmp_path / name / "ckpt"),
                           log_dir=str(tmp_path / name / "logs"))
    result = trainer.fit(train_dataset_fn(), validation_data(), proxy_pool_fn=pool_fn,
                         callbacks=callbacks)
    return trainer, result


class SimulatedKill(Exception):
    pass


def _stable(records):
    return [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in records]


def test_kill_and_resume_reaches_the_same_weights(tmp_path):
    full, full_result = _ccp_run(tmp_path, "full", max_epochs=6)
    # With min_delta=1, patience=1: instance ends every second epoch after the warm-up.
    assert [p["epoch"] for p in full_result["projections"]] == [3, 5]
    assert full_result["history"][-1]["instance"] == 2
    assert full_result["history"][-1]["lambda"] == pytest.approx(0.05)

    def kill_after_epoch_4(trainer, record):
        if record["epoch"] == 4:
            raise SimulatedKill()

    with pytest.raises(SimulatedKill):
        _ccp_run(tmp_path, "killed", max_epochs=6, callbacks=[kill_after_epoch_4])
    # A new process: different initial weights, everything must come from the checkpoint.
    resumed, resumed_result = _ccp_run(tmp_path, "killed", max_epochs=6, seed=123)
    assert resumed_result["resumed_from"].endswith("ckpt-4")
    for got, want in zip(resumed.model.weights + resumed.loss.weights,
                         full.model.weights + full.loss.weights):
        np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-6, rtol=0)
    assert _stable(resumed_result["history"]) == _stable(full_result["history"])
    assert _stable(resumed_result["projections"]) == _stable(full_result["projections"])
    for a, b in zip(resumed.projection.w_prev, full.projection.w_prev):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6, rtol=0)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    after_epoch = {}
    trainer = make_trainer(learning_rate=0.01, steps_per_epoch=3, max_epochs=5,
                           checkpoint_dir=str(tmp_path / "ckpt"))
    with pytest.raises(FloatingPointError, match="epoch 2, step 5"):
        trainer.fit(train_dataset_fn(nan_from=4), validation_data(), callbacks=[
            lambda t, r: after_epoch.__setitem__(r["epoch"], t.model.get_weights())])
    assert trainer.manager.latest_checkpoint.endswith("ckpt-1")
    fresh = make_trainer(model=make_model(seed=5), learning_rate=0.01, steps_per_epoch=3,
                         max_epochs=5, checkpoint_dir=str(tmp_path / "ckpt"))
    assert fresh.restore().endswith("ckpt-1")
    assert int(fresh.state.epoch.numpy()) == 1 and int(fresh.state.step.numpy()) == 3
    for got, want in zip(fresh.model.get_weights(), after_epoch[1]):
        assert np.all(np.isfinite(got))
        np.testing.assert_array_equal(got, want)


# ----------------------------------------------------------------------------------------------
# Distribution and precision.
# ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_replicas_match_one_replica_on_the_concatenated_batch():
    images, labels = batch_at(3)
    single = make_trainer(model=make_model(batchnorm=False, seed=1), clip_norm=1.0,
                          learning_rate=0.01)
    strategy = two_cpu_strategy()
    with strategy.scope():
        model = make_model(batchnorm=False, seed=1)
        mirrored = make_trainer(model=model, strategy=strategy, clip_norm=1.0,
                                learning_rate=0.01)
    assert mirrored.strategy.num_replicas_in_sync == 2
    terms1, grads1 = gradients(single, images, labels)
    terms2, grads2 = gradients(mirrored, images, labels)
    for key in terms1:
        assert terms2[key] == pytest.approx(terms1[key], rel=1e-5)
    for g1, g2 in zip(grads1, grads2):
        np.testing.assert_allclose(g2, g1, rtol=1e-4, atol=1e-7)
    # One full step (transforms + Adam) lands on the same weights.
    dataset = tf.data.Dataset.from_tensors((images, labels)).repeat()
    single.train_step(single.distribute(dataset))
    mirrored.train_step(mirrored.distribute(dataset))
    for v1, v2 in zip(single.variables["train"], mirrored.variables["train"]):
        np.testing.assert_allclose(v2.numpy(), v1.numpy(), rtol=1e-5, atol=1e-6)
    # Distributed embedding keeps the dataset order.
    x = np.random.default_rng(0).normal(size=(11, FEATURES)).astype(np.float32)
    ds = tf.data.Dataset.from_tensor_slices((x, np.arange(11))).batch(4)
    emb_local, lab_local = training.embed_dataset(single.model, ds)
    emb_dist, lab_dist = training.embed_dataset(model, ds, strategy=strategy)
    np.testing.assert_array_equal(lab_dist, np.arange(11))
    np.testing.assert_allclose(emb_dist, emb_local, rtol=1e-5, atol=1e-6)


def test_mixed_float16_uses_loss_scaling():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = make_model(batchnorm=False)
        loss = make_loss()
        trainer = make_trainer(model=model, loss=loss, learning_rate=0.01)
        assert isinstance(trainer.optimizers["train"], keras.mixed_precision.LossScaleOptimizer)
        before = [v.numpy().copy() for v in trainer.variables["train"]]
        iterator = trainer.distribute(train_dataset_fn()(0))
        for _ in range(2):
            terms = trainer.train_step(iterator)
            assert np.isfinite(float(terms["loss"]))
        after = [v.numpy() for v in trainer.variables["train"]]
        assert all(np.all(np.isfinite(a)) for a in after)
        assert any(not np.allclose(a, b) for a, b in zip(after, before))
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_embed_dataset_element_forms():
    model = make_model(batchnorm=False)
    x = np.random.default_rng(1).normal(size=(10, FEATURES)).astype(np.float32)
    want = model(x, training=False).numpy()
    tuples = tf.data.Dataset.from_tensor_slices((x, np.arange(10))).batch(4)
    emb, labels = training.embed_dataset(model, tuples)
    np.testing.assert_allclose(emb, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(labels, np.arange(10))
    dicts = tf.data.Dataset.from_tensor_slices({"image": x, "label": np.arange(10)}).batch(3)
    emb2, labels2 = training.embed_dataset(model, dicts)
    np.testing.assert_allclose(emb2, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(labels2, np.arange(10))
    images_only = tf.data.Dataset.from_tensor_slices(x).batch(5)
    emb3, labels3 = training.embed_dataset(model, images_only)
    assert labels3 is None and emb3.shape == (10, EMBEDDING)
    custom = tf.data.Dataset.from_tensor_slices((np.arange(10), x)).batch(4)
    emb4, labels4 = training.embed_dataset(model, custom, batch_fn=lambda e: (e[1], e[0]))
    np.testing.assert_allclose(emb4, want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="empty"):
        training.embed_dataset(model, tuples.take(0))


def test_ccp_inside_cross_batch_memory(tmp_path):
    inner = make_loss()
    loss = ccp.losses.CrossBatchMemory(inner, EMBEDDING, memory_size=24, start_at=2)
    trainer = make_trainer(loss=loss, projection_args=dict(patience=1, min_delta=1.0,
                                                           pool_size=3),
                           learning_rate=0.01, steps_per_epoch=3,
                           max_epochs=3, checkpoint_dir=str(tmp_path / "ckpt"))
    assert trainer.proxy_variables == [inner.proxies]
    before = inner.proxies.numpy().copy()
    result = trainer.fit(train_dataset_fn(), validation_data(), proxy_pool_fn=pool_fn)
    assert [p["epoch"] for p in result["projections"]] == [2]
    assert not np.allclose(inner.proxies.numpy(), before)  # k-center init and projection
    assert np.all(loss.memory_labels.numpy() >= 0)  # 9 steps x 12 samples filled the memory
    assert {"loss", "grad_norm"} <= set(result["history"][-1])
