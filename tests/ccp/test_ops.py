"""ccp.ops against numpy brute force, incl. the gradient at zero distance (SPEC §3)."""
import numpy as np
import pytest
import tensorflow as tf

from ccp import ops


EPS = np.finfo(np.float32).eps


def _brute_distances(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.array([[np.sqrt(np.sum((x - y) ** 2)) for y in b] for x in a])


def _squared_error_bound(a, b):
    """Largest float32 error of ``|a|^2 + |b|^2 - 2 a.b`` per pair, from the formula: each of the
    three is a sum of ``D`` products, in error by at most ``D eps`` times the sum of the
    products' magnitudes (whatever order a matmul kernel, oneDNN or Eigen, AVX2 or AVX-512,
    adds them in), and two additions and the scaling add ``3 eps`` of the operands:
    ``(D + 3) eps (|a| + |b|)^2``."""
    na = np.linalg.norm(np.asarray(a, np.float64), axis=1)[:, None]
    nb = np.linalg.norm(np.asarray(b, np.float64), axis=1)[None, :]
    return (a.shape[1] + 3) * EPS * (na + nb) ** 2


def _distance_error_bound(a, b, d):
    """Through the square root: ``|sqrt(d^2 + e) - d| <= min(e / (2 d), sqrt(e))``, plus its own
    rounding (``eps d``)."""
    e = _squared_error_bound(a, b)
    with np.errstate(divide="ignore"):
        return np.minimum(e / (2.0 * d), np.sqrt(e)) + EPS * d


def test_pairwise_distances_match_brute_force():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(7, 5)).astype(np.float32)
    b = rng.normal(size=(4, 5)).astype(np.float32)
    d = _brute_distances(a, b)
    assert np.all(np.abs(ops.pairwise_distances(a, b).numpy() - d)
                  <= _distance_error_bound(a, b, d))
    assert np.all(np.abs(ops.pairwise_distances(a, b, squared=True).numpy() - d ** 2)
                  <= _squared_error_bound(a, b) + EPS * d ** 2)
    within = ops.pairwise_distances(a).numpy()
    d_within = _brute_distances(a, a)
    off_diagonal = ~np.eye(len(a), dtype=bool)
    assert np.all((np.abs(within - d_within) <= _distance_error_bound(a, a, d_within))
                  [off_diagonal])
    assert np.all(np.diag(within) == 0.0)  # set, not left to rounding


def test_distance_gradient_is_finite_and_zero_at_zero_distance():
    a = tf.constant([[1.0, 2.0], [1.0, 2.0], [4.0, 6.0]])
    with tf.GradientTape() as tape:
        tape.watch(a)
        d = ops.pairwise_distances(a)
        total = tf.reduce_sum(d)
    grad = tape.gradient(total, a).numpy()
    assert np.all(np.isfinite(grad))
    # Rows 0 and 1 coincide: their mutual term contributes nothing; each is pulled only by row 2
    # (twice: d(i,2) and d(2,i)), whose unit direction is (3, 4) / 5.
    np.testing.assert_allclose(grad[0], -2 * np.array([3.0, 4.0]) / 5.0, atol=1e-5)
    np.testing.assert_allclose(grad[1], grad[0], atol=1e-6)
    np.testing.assert_allclose(grad[2], 4 * np.array([3.0, 4.0]) / 5.0, atol=1e-5)


def test_safe_sqrt_gradient():
    x = tf.constant([0.0, 4.0, -1e-9])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = ops.safe_sqrt(x)
    np.testing.assert_allclose(y.numpy(), [0.0, 2.0, 0.0])
    np.testing.assert_allclose(tape.gradient(y, x).numpy(), [0.0, 0.25, 0.0])


def test_similarities():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(3, 4)).astype(np.float32)
    b = rng.normal(size=(5, 4)).astype(np.float32)
    # A float32 dot product of D terms: error <= D eps |a| |b| in any summation order.
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    bound = a.shape[1] * EPS * np.outer(np.linalg.norm(a64, axis=1), np.linalg.norm(b64, axis=1))
    assert np.all(np.abs(ops.pairwise_similarities(a, b).numpy() - a64 @ b64.T) <= bound)
    self_bound = a.shape[1] * EPS * np.outer(*[np.linalg.norm(a64, axis=1)] * 2)
    assert np.all(np.abs(ops.pairwise_similarities(a).numpy() - a64 @ a64.T) <= self_bound)


@pytest.mark.parametrize("labels_shape", ["flat", "column"])
def test_pair_masks_same_set(labels_shape):
    labels = np.array([0, 1, 0, 2, 1, -1])
    given = labels if labels_shape == "flat" else labels[:, None]
    pos, neg = (m.numpy() for m in ops.pair_masks(given))
    for i in range(6):
        for j in range(6):
            valid = labels[i] >= 0 and labels[j] >= 0
            assert pos[i, j] == (valid and i != j and labels[i] == labels[j])
            assert neg[i, j] == (valid and labels[i] != labels[j])


def test_pair_masks_query_vs_reference_keeps_diagonal():
    labels = np.array([0, 1, 2])
    ref = np.array([0, 1, 1, -1])
    pos, neg = (m.numpy() for m in ops.pair_masks(labels, ref))
    np.testing.assert_array_equal(pos, [[1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(neg, [[0, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 0]])
