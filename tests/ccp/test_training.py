"""Trainer: learning, kill-and-resume equality, NaN handling, distribution, transforms."""
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import ccp
from ccp import projection as projection_lib
from ccp import training

NUM_CLASSES, FEATURES, DIM, PER_CLASS = 4, 12, 8, 4


def clustered_data(seed=0, per_class=30):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(NUM_CLASSES, FEATURES)) * 1.5
    x = np.concatenate([centers[c] + rng.normal(size=(per_class, FEATURES))
                        for c in range(NUM_CLASSES)]).astype(np.float32)
    y = np.repeat(np.arange(NUM_CLASSES), per_class).astype(np.int32)
    return x, y


X, Y = clustered_data()


def train_dataset_fn(start_step, nan_from_step=None):
    """Step-deterministic stream: batch s depends only on s (resumable)."""
    def batches():
        step = start_step
        while True:
            rng = np.random.default_rng(1000 + step)
            idx = np.concatenate([rng.choice(np.flatnonzero(Y == c), PER_CLASS, replace=False)
                                  for c in range(NUM_CLASSES)])
            images = X[idx].copy()
            if nan_from_step is not None and step >= nan_from_step:
                images[:] = np.nan
            yield images, Y[idx]
            step += 1
    spec = (tf.TensorSpec([NUM_CLASSES * PER_CLASS, FEATURES], tf.float32),
            tf.TensorSpec([NUM_CLASSES * PER_CLASS], tf.int32))
    return tf.data.Dataset.from_generator(batches, output_signature=spec)


VALIDATION = tf.data.Dataset.from_tensor_slices((X, Y)).batch(50)


def pool_fn(model, index):
    rng = np.random.default_rng(index)
    idx = np.stack([rng.choice(np.flatnonzero(Y == c), 6, replace=False) for c in range(NUM_CLASSES)])
    emb = model(X[idx.reshape(-1)], training=False).numpy()
    return emb.reshape(NUM_CLASSES, 6, -1)


def make_model(seed=0, batchnorm=False):
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((FEATURES,)), keras.layers.Dense(16, name="hidden")]
    if batchnorm:
        layers.append(keras.layers.BatchNormalization(name="bn"))
    layers += [keras.layers.ReLU(), keras.layers.Dense(DIM, name="embedding")]
    return keras.Sequential(layers)


def make_loss(seed=0):
    keras.utils.set_random_seed(seed)
    return ccp.losses.CCPLoss(ccp.losses.ContrastiveLoss(pos_margin=0.0, neg_margin=0.5),
                              NUM_CLASSES, DIM, proxies_per_class=3)


def make_trainer(tmp_path=None, max_epochs=6, strategy=None, **kwargs):
    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():
        model = make_model(batchnorm=kwargs.pop("batchnorm", False))
        loss = make_loss()
        options = dict(learning_rate=1e-2, steps_per_epoch=5, max_epochs=max_epochs, patience=50,
                       projection=projection_lib.AlternatingProjection(patience=1, min_delta=0.02),
                       progress_bar=False, strategy=strategy)
        if tmp_path is not None:
            options.update(checkpoint_dir=str(tmp_path / "ckpt"), log_dir=str(tmp_path / "logs"))
        options.update(kwargs)
        return training.Trainer(model, loss, **options)


def test_training_lowers_the_loss_and_raises_map_at_r(tmp_path):
    trainer = make_trainer(tmp_path, max_epochs=8)
    untrained = trainer.validate(VALIDATION)["map_at_r"]
    result = trainer.fit(train_dataset_fn, VALIDATION, pool_fn)
    history = result["history"]
    assert history[-1]["loss"] < history[0]["loss"]
    assert result["best_metric"] > untrained + 0.05
    assert result["projections"], "patience 1 must end at least one CCP instance"
    # The JSON-lines log holds every epoch and projection; the model holds the best weights.
    with open(tmp_path / "logs" / "events.jsonl") as handle:
        events = [json.loads(line) for line in handle]
    assert [e["epoch"] for e in events if e["event"] == "epoch"] == list(range(1, 9))
    assert trainer.validate(VALIDATION)["map_at_r"] == pytest.approx(result["best_metric"], abs=1e-6)
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(tmp_path / "logs"))


def test_kill_and_resume_reaches_the_same_weights(tmp_path):
    full = make_trainer(tmp_path / "full", max_epochs=6)
    full.fit(train_dataset_fn, VALIDATION, pool_fn)
    # "Killed" after 3 epochs: a new process would rebuild everything and call fit again.
    first = make_trainer(tmp_path / "killed", max_epochs=3)
    first.fit(train_dataset_fn, VALIDATION, pool_fn)
    resumed = make_trainer(tmp_path / "killed", max_epochs=6)
    result = resumed.fit(train_dataset_fn, VALIDATION, pool_fn)
    assert result["epochs"] == 6
    for a, b in zip(full.model.weights + full.loss.weights, resumed.model.weights + resumed.loss.weights):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    assert float(full.projection.lambda_t.numpy()) == float(resumed.projection.lambda_t.numpy())
    with open(tmp_path / "killed" / "logs" / "events.jsonl") as handle:
        epochs = [json.loads(line)["epoch"] for line in handle if '"event": "epoch"' in line]
    assert epochs == list(range(1, 7))


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    trainer = make_trainer(tmp_path, max_epochs=5)
    with pytest.raises(FloatingPointError, match="non-finite loss or gradient at epoch 3"):
        trainer.fit(lambda start: train_dataset_fn(start, nan_from_step=12), VALIDATION, pool_fn)
    assert trainer.manager.latest_checkpoint.endswith("-2")
    restored = make_trainer(tmp_path, max_epochs=5)
    restored.restore()
    assert int(restored.state.epoch.numpy()) == 2
    assert all(np.all(np.isfinite(np.asarray(w))) for w in restored.model.weights)


def test_two_replicas_give_the_single_device_loss_and_gradients():
    batch = next(iter(train_dataset_fn(0)))
    single = make_trainer(projection=None)
    mirrored_strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    mirrored = make_trainer(projection=None, strategy=mirrored_strategy)
    terms_1, grads_1 = single.compute_gradients(batch)
    terms_2, grads_2 = mirrored.compute_gradients(batch)
    assert terms_2["loss"] == pytest.approx(terms_1["loss"], rel=1e-5)
    for g1, g2 in zip(grads_1, grads_2):
        np.testing.assert_allclose(g1, g2, rtol=1e-4, atol=1e-6)
    # And a full step under the strategy updates the weights as the single device does.
    single.train_step(batch)
    mirrored.train_step(next(iter(mirrored_strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensors(batch)))))
    for a, b in zip(single.model.weights, mirrored.model.weights):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_proximal_term_enters_the_gradient():
    trainer = make_trainer(projection=projection_lib.AlternatingProjection(lambda_0=0.0),
                           weight_decay=0.0, clip_norm=0.0, clip_value=0.0)
    batch = next(iter(train_dataset_fn(0)))
    _, plain = trainer.compute_gradients(batch)
    trainer.projection.lambda_t.assign(0.5)
    for anchor in trainer.projection.w_prev:
        anchor.assign(tf.zeros_like(anchor))
    _, proximal = trainer.compute_gradients(batch)
    for index, variable in enumerate(trainer.variables):
        extra = 0.5 * np.asarray(variable) if index < len(trainer.model_variables) else 0.0
        np.testing.assert_allclose(proximal[index], plain[index] + extra, rtol=1e-5, atol=1e-6)


def test_default_transforms_skip_batchnorm_and_clip_in_order():
    model = make_model(batchnorm=True)
    transforms = training.default_gradient_transforms(model, weight_decay=0.1, clip_norm=1.0,
                                                      clip_value=0.3)
    variables = model.trainable_variables
    grads = [tf.ones_like(v) for v in variables]
    out = grads
    for transform in transforms:
        out = transform(out, variables)
    # Hand computation: decay adds 0.1*w to non-BN weights, then global-norm clip to 1, then
    # clip each entry to [-0.3, 0.3].
    bn_ids = {id(v) for v in training.batchnorm_variables(model)}
    decayed = [np.ones(v.shape) + (0.1 * np.asarray(v) if id(v) not in bn_ids else 0.0)
               for v in variables]
    norm = np.sqrt(sum(np.sum(g ** 2) for g in decayed))
    expected = [np.clip(g * min(1.0, 1.0 / norm), -0.3, 0.3) for g in decayed]
    for got, want in zip(out, expected):
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-7)
    assert len(bn_ids & {id(v) for v in variables}) == 2  # gamma and beta were excluded


def test_warmup_trains_only_the_embedding_layer_and_proxies():
    trainer = make_trainer(warmup_epochs=1, projection=None)
    before = {v.path: np.asarray(v).copy() for v in trainer.variables}
    trainer.train_step(next(iter(train_dataset_fn(0))), warmup=True)
    for variable in trainer.variables:
        changed = not np.allclose(before[variable.path], np.asarray(variable))
        assert changed == ("embedding" in variable.path or "prox" in variable.path), variable.path


def test_reduce_on_plateau_schedule():
    schedule = training.ReduceOnPlateauLR(1.0, factor=0.5, patience=2)
    rates = []
    for value in [0.1, 0.2, 0.2, 0.19, 0.3, 0.3, 0.3]:
        schedule.on_epoch_end(value)
        rates.append(float(schedule.learning_rate.numpy()))
    assert rates == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25]
    decay = training.ExponentialDecayLR(1.0, decay_rate=0.5, decay_steps=10)
    assert float(decay.at_step(20).numpy()) == pytest.approx(0.25)


def test_embed_dataset_returns_all_rows_in_order():
    model = make_model()
    embeddings, labels = training.embed_dataset(model, VALIDATION)
    np.testing.assert_allclose(embeddings, model(X).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(labels, Y)
