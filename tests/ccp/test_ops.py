"""ccp.ops against numpy brute force, incl. the gradient at zero distance (SPEC §3)."""
import numpy as np
import pytest
import tensorflow as tf

from ccp import ops


def _brute_distances(a, b):
    return np.array([[np.sqrt(np.sum((x - y) ** 2)) for y in b] for x in a])


def test_pairwise_distances_match_brute_force():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(7, 5)).astype(np.float32)
    b = rng.normal(size=(4, 5)).astype(np.float32)
    np.testing.assert_allclose(ops.pairwise_distances(a, b).numpy(), _brute_distances(a, b),
                               atol=1e-5)
    np.testing.assert_allclose(
        ops.pairwise_distances(a, b, squared=True).numpy(), _brute_distances(a, b) ** 2, atol=1e-4
    )
    within = ops.pairwise_distances(a).numpy()
    np.testing.assert_allclose(within, _brute_distances(a, a), atol=1e-5)
    assert np.all(np.diag(within) == 0.0)


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
    np.testing.assert_allclose(ops.pairwise_similarities(a, b).numpy(), a @ b.T, atol=1e-5)
    np.testing.assert_allclose(ops.pairwise_similarities(a).numpy(), a @ a.T, atol=1e-5)


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
