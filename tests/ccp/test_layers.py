"""LipschitzL2Normalization value and custom gradient vs the closed form (SPEC §2)."""
import keras
import numpy as np
import tensorflow as tf

from ccp import layers


def _closed_form_grad(x, dy):
    """Row-wise: (dy - <u,dy>u)/||x|| if ||x|| > 1 else dy (written independently of the layer)."""
    out = np.empty_like(dy)
    for i in range(x.shape[0]):
        norm = np.linalg.norm(x[i])
        if norm > 1:
            u = x[i] / norm
            out[i] = (dy[i] - np.dot(u, dy[i]) * u) / norm
        else:
            out[i] = dy[i]
    return out


def test_value_projects_only_long_vectors():
    x = np.array([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0], [0.6, 0.8]], np.float32)
    y = layers.LipschitzL2Normalization()(x).numpy()
    np.testing.assert_allclose(y, [[0.6, 0.8], [0.3, 0.4], [0.0, 0.0], [0.6, 0.8]], atol=1e-6)


def test_custom_gradient_matches_closed_form():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 5)).astype(np.float32)
    x[:3] *= 0.1  # inside the unit ball
    x[3:] *= 3.0  # outside
    dy = rng.normal(size=(6, 5)).astype(np.float32)
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        y = layers.lipschitz_l2_normalize(xt)
    grad = tape.gradient(y, xt, output_gradients=tf.constant(dy)).numpy()
    np.testing.assert_allclose(grad, _closed_form_grad(x, dy), atol=1e-6)
    # Outside the ball, the custom gradient equals the true Jacobian of x/||x||.
    xl = tf.constant(x[3:].astype(np.float64))
    with tf.GradientTape() as tape:
        tape.watch(xl)
        true = xl / tf.norm(xl, axis=-1, keepdims=True)
    true_grad = tape.gradient(true, xl, output_gradients=tf.constant(dy[3:].astype(np.float64)))
    np.testing.assert_allclose(grad[3:], true_grad.numpy(), atol=1e-5)


def test_global_pooling_modes_and_config_round_trip():
    x = np.arange(2 * 3 * 3 * 4, dtype=np.float32).reshape(2, 3, 3, 4)
    for mode, expected in [
        ("avg", x.mean(axis=(1, 2))),
        ("max", x.max(axis=(1, 2))),
        ("avg+max", x.mean(axis=(1, 2)) + x.max(axis=(1, 2))),
    ]:
        layer = layers.GlobalPooling(mode)
        np.testing.assert_allclose(layer(x).numpy(), expected, rtol=1e-6)
        clone = keras.layers.deserialize(keras.layers.serialize(layer))
        assert isinstance(clone, layers.GlobalPooling) and clone.mode == mode


def test_global_pooling_rejects_unknown_mode():
    try:
        layers.GlobalPooling("median")
    except ValueError as error:
        assert "avg+max" in str(error)
    else:
        raise AssertionError("expected ValueError")
