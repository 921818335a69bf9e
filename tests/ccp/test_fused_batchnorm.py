"""FusedBatchNormalization vs a float64 numpy batch norm and vs keras.layers.BatchNormalization.

The numpy reference is written from the definition: y = gamma (x - mu) / sqrt(var + eps) + beta
with the biased batch variance, and its closed-form input gradient
dx = gamma / sqrt(var + eps) * (dy - mean(dy) - xhat * mean(dy * xhat)) in training mode
(dy * gamma / sqrt(var + eps) in inference mode).
"""
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from ccp import layers

EPSILON, MOMENTUM = 1e-3, 0.9


def _numpy_batchnorm(x, gamma, beta, moving_mean, moving_variance, dy, training):
    """float64 outputs, dx, dgamma, dbeta and the new moving statistics; channels last."""
    x, dy = x.astype(np.float64), dy.astype(np.float64)
    axes = tuple(range(x.ndim - 1))
    if training:
        mean, variance = x.mean(axis=axes), x.var(axis=axes)  # biased, as Keras 3
    else:
        mean, variance = moving_mean.astype(np.float64), moving_variance.astype(np.float64)
    inverse_std = 1.0 / np.sqrt(variance + EPSILON)
    normalized = (x - mean) * inverse_std
    outputs = gamma * normalized + beta
    dgamma, dbeta = (dy * normalized).sum(axis=axes), dy.sum(axis=axes)
    if training:
        dx = gamma * inverse_std * (dy - dy.mean(axis=axes)
                                    - normalized * (dy * normalized).mean(axis=axes))
        new_mean = moving_mean * MOMENTUM + mean * (1 - MOMENTUM)
        new_variance = moving_variance * MOMENTUM + variance * (1 - MOMENTUM)
    else:
        dx = gamma * inverse_std * dy
        new_mean, new_variance = moving_mean, moving_variance
    return outputs, dx, dgamma, dbeta, new_mean, new_variance


def _problem(shape=(3, 5, 4, 6), seed=0):
    rng = np.random.default_rng(seed)
    channels = shape[-1]
    x = (rng.normal(size=shape) * 2.0 + 0.7).astype(np.float32)
    dy = rng.normal(size=shape).astype(np.float32)
    weights = [rng.uniform(0.5, 1.5, channels), rng.normal(size=channels),  # gamma, beta
               rng.normal(size=channels), rng.uniform(0.5, 2.0, channels)]  # moving stats
    return x, dy, [w.astype(np.float32) for w in weights]


def _run(layer, x, dy, training):
    """outputs, dx, the gradients of the layer's trainable weights (gamma, beta where they
    exist; none when frozen), moving mean, moving variance (after the call)."""
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        outputs = layer(x, training=training)
    grads = tape.gradient(outputs, [x] + layer.trainable_weights,
                          output_gradients=tf.constant(dy))
    return [np.asarray(v) for v in [outputs, *grads, layer.moving_mean,
                                    layer.moving_variance]]


def _built(layer_class, weights, shape, **kwargs):
    layer = layer_class(epsilon=EPSILON, momentum=MOMENTUM, **kwargs)
    layer.build(shape)
    layer.set_weights(weights)
    return layer


@pytest.mark.parametrize("training", [True, False])
def test_matches_the_float64_reference_value_gradients_and_moving_statistics(training):
    x, dy, weights = _problem()
    layer = _built(layers.FusedBatchNormalization, weights, x.shape)
    got = _run(layer, x, dy, training)
    assert len(got) == 6  # gamma and beta both trainable
    expected = _numpy_batchnorm(x, *weights, dy, training)
    for name, g, e in zip(("outputs", "dx", "dgamma", "dbeta", "moving_mean",
                           "moving_variance"), got, expected):
        np.testing.assert_allclose(g, e, rtol=2e-5, atol=2e-5, err_msg=name)


def test_frozen_layer_runs_in_inference_mode_like_keras():
    x, dy, weights = _problem(seed=1)
    layer = _built(layers.FusedBatchNormalization, weights, x.shape)
    layer.trainable = False
    outputs, dx, mean, variance = _run(layer, x, dy, training=True)
    expected = _numpy_batchnorm(x, *weights, dy, training=False)
    np.testing.assert_allclose(outputs, expected[0], rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(dx, expected[1], rtol=2e-5, atol=2e-5)
    np.testing.assert_array_equal(mean, weights[2])  # untouched
    np.testing.assert_array_equal(variance, weights[3])


@pytest.mark.parametrize("kwargs", [{}, {"center": False}, {"scale": False},
                                    {"axis": 1}])
@pytest.mark.parametrize("training", [True, False])
def test_agrees_with_keras_batchnormalization(kwargs, training):
    x, dy, weights = _problem(shape=(4, 6, 5, 3), seed=2)
    if kwargs.get("axis") == 1:  # channels second: [B, C, H, W]
        x, dy = np.ascontiguousarray(x.transpose(0, 3, 1, 2)), np.ascontiguousarray(
            dy.transpose(0, 3, 1, 2))
    kept = [w for w, used in zip(weights, (kwargs.get("scale", True),
                                           kwargs.get("center", True), True, True)) if used]
    fused = _built(layers.FusedBatchNormalization, kept, x.shape, **kwargs)
    plain = _built(keras.layers.BatchNormalization, kept, x.shape, **kwargs)
    for got, expected in zip(_run(fused, x, dy, training), _run(plain, x, dy, training)):
        np.testing.assert_allclose(got, expected, rtol=3e-5, atol=3e-5)


@pytest.mark.parametrize("case", ["rank2", "mask", "renorm"])
def test_inputs_the_kernel_does_not_cover_take_keras_path(case):
    rng = np.random.default_rng(3)
    kwargs = {"renorm": True} if case == "renorm" else {}
    shape = (7, 5) if case == "rank2" else (3, 4, 2, 5)
    x = rng.normal(size=shape).astype(np.float32)
    mask = None
    if case == "mask":
        x = x.reshape(3, 8, 5)
        mask = tf.constant(rng.random((3, 8)) > 0.3)
    fused = layers.FusedBatchNormalization(**kwargs)
    plain = keras.layers.BatchNormalization(**kwargs)
    outputs = [layer(x, training=True, mask=mask) for layer in (fused, plain)]
    np.testing.assert_allclose(outputs[0], outputs[1], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(fused.moving_variance, plain.moving_variance, rtol=1e-6)


def test_xla_and_float16_compute():
    x, dy, weights = _problem(seed=4)
    layer = _built(layers.FusedBatchNormalization, weights, x.shape)

    @tf.function(jit_compile=True)
    def step(inputs):
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            outputs = layer(inputs, training=True)
        return outputs, tape.gradient(outputs, inputs, output_gradients=tf.constant(dy))

    outputs, dx = step(tf.constant(x))
    expected = _numpy_batchnorm(x, *weights, dy, training=True)
    np.testing.assert_allclose(outputs, expected[0], rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(dx, expected[1], rtol=2e-5, atol=2e-5)

    half = layers.FusedBatchNormalization(epsilon=EPSILON, dtype="mixed_float16")
    result = half(tf.constant(x, tf.float16), training=True)
    assert result.dtype == tf.float16 and half.moving_mean.dtype == tf.float32
    np.testing.assert_allclose(np.asarray(result, np.float32),
                               _numpy_batchnorm(x, np.ones(6), np.zeros(6), 0, 1, dy, True)[0],
                               atol=5e-3)


def test_saved_model_file_round_trip(tmp_path):
    x, _, weights = _problem(seed=5)
    inputs = keras.Input(x.shape[1:])
    model = keras.Model(inputs, layers.FusedBatchNormalization(name="bn")(inputs))
    model.get_layer("bn").set_weights(weights)
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    restored = keras.models.load_model(path)
    layer = restored.get_layer("bn")
    assert isinstance(layer, layers.FusedBatchNormalization)
    assert isinstance(layer, keras.layers.BatchNormalization)
    np.testing.assert_array_equal(restored(x, training=False), model(x, training=False))
