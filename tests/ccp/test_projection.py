"""greedy_k_center vs a naive numpy loop, and the CCP schedule on scripted MAP@R traces (SPEC §5)."""
import numpy as np
import pytest
import tensorflow as tf

from ccp import projection


def naive_k_center(candidates, centers, k):
    """Per class, plain Python: farthest candidate from the cover, lowest index on ties."""
    out = []
    for cand, cover in zip(candidates, centers):
        cover = [c for c in cover]
        picks = []
        for _ in range(k):
            best_index, best_dist = None, -1.0
            for i, q in enumerate(cand):
                d = min((float(np.sum((q - c) ** 2)) for c in cover), default=np.inf)
                if d > best_dist:  # strict: the first (lowest) index wins ties
                    best_index, best_dist = i, d
            picks.append(cand[best_index])
            cover.append(cand[best_index])
        out.append(np.stack(picks))
    return np.stack(out)


def test_matches_naive_loop_from_zero_cover_and_from_proxies():
    rng = np.random.default_rng(0)
    candidates = rng.normal(size=(5, 9, 4)).astype(np.float32)
    zero = np.zeros((5, 1, 4), np.float32)
    np.testing.assert_allclose(projection.greedy_k_center(candidates, zero, 4).numpy(),
                               naive_k_center(candidates, zero, 4), atol=1e-6)
    cover = rng.normal(size=(5, 3, 4)).astype(np.float32)
    np.testing.assert_allclose(projection.greedy_k_center(candidates, cover, 3).numpy(),
                               naive_k_center(candidates, cover, 3), atol=1e-6)


def test_ties_pick_the_lowest_index():
    # Four candidates at the same distance 1 from the origin (exactly representable).
    candidates = np.array([[[0, 1], [1, 0], [0, -1], [-1, 0]]], np.float32)
    picks = projection.greedy_k_center(candidates, np.zeros((1, 1, 2), np.float32), 2).numpy()
    np.testing.assert_array_equal(picks[0, 0], [0, 1])
    # The origin stays in the cover: every remaining candidate is still at squared distance 1
    # (min(1, 2), min(1, 4), min(1, 2)), so the tie goes to the lowest index, (1, 0).
    np.testing.assert_array_equal(picks[0, 1], [1, 0])
    # Without the origin in the cover, (0,-1) is the farthest from (0,1) (4 vs 2).
    from_first = projection.greedy_k_center(candidates, candidates[:, :1], 1).numpy()
    np.testing.assert_array_equal(from_first[0, 0], [0, -1])
    # Duplicates: with every candidate equal, index 0 is chosen each time.
    same = np.ones((2, 5, 3), np.float32) * np.arange(5, dtype=np.float32)[None, :, None] * 0
    np.testing.assert_array_equal(
        projection.greedy_k_center(same, np.zeros((2, 0, 3), np.float32), 2).numpy(),
        np.zeros((2, 2, 3)))


def test_xla_compiles_and_agrees():
    rng = np.random.default_rng(1)
    candidates = rng.normal(size=(3, 7, 5)).astype(np.float32)
    cover = rng.normal(size=(3, 2, 5)).astype(np.float32)
    compiled = tf.function(lambda q, c: projection.greedy_k_center(q, c, 3), jit_compile=True)
    np.testing.assert_allclose(compiled(candidates, cover).numpy(),
                               naive_k_center(candidates, cover, 3), atol=1e-5)


def test_covering_radius_and_mean_proxy_distance():
    points = np.array([[[0, 0], [3, 4], [6, 8]]], np.float32)
    centers = np.array([[[0, 0]]], np.float32)
    np.testing.assert_allclose(projection.covering_radius(points, centers).numpy(), [10.0])
    proxies = np.array([[[0, 0], [3, 4]], [[0, 0], [0, 1]]], np.float64)
    assert projection.mean_proxy_distance(proxies) == pytest.approx((5 + 1) / 2)


class FakeProxyLoss:
    """The two methods of the CCP loss contract the schedule uses, over a plain variable."""

    def __init__(self, num_classes, per_class, dim):
        self.proxies = tf.Variable(np.full((num_classes * per_class, dim), 7.0, np.float32))
        self.shape = (num_classes, per_class, dim)

    def proxies_by_class(self):
        return tf.reshape(self.proxies, self.shape)

    def assign_proxies(self, new):
        self.proxies.assign(tf.reshape(new, [-1, self.shape[2]]))


def _schedule(**kwargs):
    weight = tf.Variable([1.0, 2.0])
    loss = FakeProxyLoss(2, 2, 3)
    schedule = projection.AlternatingProjection(lambda_0=0.5, decay=0.5, **kwargs)
    schedule.attach([weight], loss)
    return schedule, weight, loss


def _pool_fn(pools):
    def pool(model, index):
        pools.append(np.random.default_rng(index).normal(size=(2, 4, 3)).astype(np.float32))
        return pools[-1]
    return pool


def test_scripted_trace_ends_instances_at_the_right_epochs():
    schedule, weight, loss = _schedule(patience=2, min_iterations=1)
    pools = []
    event = schedule.initialize_proxies(_pool_fn(pools), model=None)
    assert event["event"] == "proxy_init"
    initial = loss.proxies_by_class().numpy()
    for c in range(2):  # every initial proxy is a row of the class's pool
        for proxy in initial[c]:
            assert any(np.allclose(proxy, row) for row in pools[0][c])
    trace = [0.10, 0.20, 0.15, 0.18, 0.30, 0.31, 0.31, 0.25]
    actions, lambdas, best_at_projection = [], [], []
    for epoch, value in enumerate(trace, start=1):
        weight.assign([float(epoch), -float(epoch)])
        before = loss.proxies_by_class().numpy()
        action, event = schedule.on_epoch_end(value, None, _pool_fn(pools))
        actions.append(action)
        lambdas.append(float(schedule.lambda_t.numpy()))
        if action == projection.PROJECT:
            best_at_projection.append([w.numpy().copy() for w in schedule.w_prev])
            after = loss.proxies_by_class().numpy()
            assert not np.allclose(before, after)
            for c in range(2):
                for proxy in after[c]:
                    assert any(np.allclose(proxy, row) for row in pools[-1][c])
            assert event["instance"] == len(best_at_projection)
            assert event["radius_after"] <= event["radius_before"] + 1e-6
    assert actions == ["new_best", "new_best", "continue", "project",
                       "new_best", "new_best", "continue", "project"]
    # lambda: 0 in instance 0, then lambda_0 * decay**t.
    assert lambdas == pytest.approx([0, 0, 0, 0.25, 0.25, 0.25, 0.25, 0.125])
    # w_prev <- the best weights of the instance (epoch 2, then epoch 6).
    np.testing.assert_allclose(best_at_projection[0][0], [2.0, -2.0])
    np.testing.assert_allclose(best_at_projection[1][0], [6.0, -6.0])


def test_min_iterations_delays_tracking():
    schedule, _, _ = _schedule(patience=1, min_iterations=3)
    actions = [schedule.on_epoch_end(v)[0] for v in [0.5, 0.4, 0.3, 0.2, 0.1]]
    assert actions == ["continue", "continue", "new_best", "project", "continue"]


def test_monitor_lag_reacts_one_epoch_late():
    schedule, weight, _ = _schedule(patience=1, monitor_lag=1)
    actions = []
    for epoch, value in enumerate([0.1, 0.3, 0.2, 0.2], start=1):
        weight.assign([float(epoch), 0.0])
        actions.append(schedule.on_epoch_end(value)[0])
    # Epoch 1 has no previous value; epoch 2 sees 0.1 (best, snapshot of epoch-2 weights),
    # epoch 3 sees 0.3 (best, snapshot of epoch 3), epoch 4 sees 0.2: instance ends.
    assert actions == ["continue", "new_best", "new_best", "project"]
    np.testing.assert_allclose(schedule.w_prev[0].numpy(), [3.0, 0.0])


def test_proximal_gradient_matches_hand_computation():
    schedule, weight, _ = _schedule(patience=1)
    schedule.w_prev[0].assign([0.5, 0.5])
    schedule.lambda_t.assign(0.1)
    grads = schedule.proximal_gradients([tf.constant([1.0, 1.0])])
    # g + lambda (w - w_prev) = 1 + 0.1 * ([1, 2] - 0.5)
    np.testing.assert_allclose(grads[0].numpy(), [1.05, 1.15], rtol=1e-6)


def test_state_round_trips_through_a_checkpoint(tmp_path):
    schedule, weight, loss = _schedule(patience=1)
    for value in [0.1, 0.3, 0.2]:
        schedule.on_epoch_end(value)
    path = tf.train.Checkpoint(p=schedule).save(str(tmp_path / "ckpt"))
    restored, _, _ = _schedule(patience=1)
    tf.train.Checkpoint(p=restored).restore(path).assert_existing_objects_matched()
    for name in ("instance", "lambda_t", "epochs_in_instance", "epochs_without_improvement",
                 "best_value"):
        assert getattr(restored, name).numpy() == getattr(schedule, name).numpy()
    np.testing.assert_allclose(restored.w_prev[0].numpy(), schedule.w_prev[0].numpy())
