"""Shared helpers of the loss tests: the float64 Lipschitz normalization, seeded batches,
central finite differences and the TensorFlow value + gradients of a loss layer.

The tolerances of the loss tests follow from float32 arithmetic, not from one CPU's output
(they hold with oneDNN's kernels on or off, on AVX2 and AVX-512):
- inputs: :func:`batch` rows have norm <= ~3 and ``D <= 16``; every normalized vector, dot
  product and distance is then in error by at most ``(D + 4) eps`` (``eps = 1.19e-7``: a sum of
  ``D`` products in any order, the norm, the division, a square root) ~ 2.4e-6 absolutely;
- values: the losses are means, log-sum-exps or softmaxes of O(1) terms, Lipschitz in those
  inputs with a constant of at most their largest scale (MS beta = 40, a temperature 1/0.1,
  SoftTriple lambda = 20), so within 40 * 2.4e-6 ~ 1e-4 absolutely; against losses of O(1),
  ``rel=1e-4`` (1e-5 where the scales are <= 10);
- gradients: float32 error of the same order on entries of O(0.1 .. 10); the float64 central
  differences (h = 1e-5) are exact to ~h^2 times the third derivative (~1e-9) away from hinge
  kinks (the seeded batches keep every pdist > 1e-4 from a margin): ``atol`` 3e-5 .. 3e-4 (by
  the loss's scale) with ``rtol=3e-3`` for the large entries.
"""
import numpy as np
import tensorflow as tf


def lip(x):
    """Float64 Lipschitz normalization x / max(||x||, 1) of the rows of ``x`` [N, D] (SPEC §2)."""
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1.0)


def batch(num_classes, per_class, dim, seed, scale=1.5):
    """A seeded batch: float32 embeddings [num_classes * per_class, dim] and int labels."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(num_classes * per_class, dim)) * scale / np.sqrt(dim)
    x[::3] *= 0.3  # some rows inside the unit ball: the Lipschitz normalization matters
    return x.astype(np.float32), np.repeat(np.arange(num_classes), per_class)


def numeric_grad(fn, x, h=1e-5):
    """Central finite differences of the scalar ``fn`` at ``x`` (float64, same shape as x)."""
    x = np.asarray(x, np.float64)
    grad = np.zeros_like(x)
    for index in np.ndindex(*x.shape):
        up, down = x.copy(), x.copy()
        up[index] += h
        down[index] -= h
        grad[index] = (fn(up) - fn(down)) / (2 * h)
    return grad


def tf_value_and_grads(layer, labels, x, extra=()):
    """``layer(labels, x)`` and its gradients w.r.t. x and the variables ``extra`` (numpy)."""
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        value = layer(labels, xt)
    grads = tape.gradient(value, [xt, *extra])
    return float(value), [None if g is None else np.asarray(g) for g in grads]


def value_and_grads(fn, x, variables=()):
    """``fn(x)`` and its gradients w.r.t. x and ``variables`` (numpy; fn takes a tensor)."""
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        value = fn(xt)
    grads = tape.gradient(value, [xt, *variables])
    return float(value), [np.asarray(g) for g in grads]


def assert_config_round_trip(layer, seed, **call_kwargs):
    """``layer`` survives ``keras.layers.serialize``/``deserialize``: same type, same config
    (name aside), and, with its weights copied over, the same loss on a seeded batch."""
    import keras
    import pytest

    clone = keras.layers.deserialize(keras.layers.serialize(layer))
    assert type(clone) is type(layer)

    def strip(config):
        return {k: v for k, v in config.items() if k != "name"}

    assert strip(clone.get_config()) == strip(layer.get_config())
    assert len(clone.weights) == len(layer.weights)
    for source, target in zip(layer.weights, clone.weights):
        target.assign(source)
    x, y = batch(4, 2, 5, seed=seed)
    assert float(clone(y, x, **call_kwargs)) == pytest.approx(
        float(layer(y, x, **call_kwargs)), rel=1e-6)


def np_hard_negatives(pdist, pos, neg):
    """Per row the k smallest-pdist negatives (ties at the k-th kept), k = max #positives."""
    k = max(1, int(pos.sum(axis=1).max()))
    keep = np.zeros_like(neg)
    for i in range(pdist.shape[0]):
        values = sorted(pdist[i, j] for j in range(pdist.shape[1]) if neg[i, j])
        threshold = values[k - 1] if len(values) >= k else np.inf
        for j in range(pdist.shape[1]):
            keep[i, j] = neg[i, j] and pdist[i, j] <= threshold
    return keep
