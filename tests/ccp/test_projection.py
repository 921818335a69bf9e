"""ccp.projection: greedy k-center (vs a naive numpy loop), figures, proximal anchor, the
variable-free schedule on scripted traces, and the projection that acts on it."""
import math

import numpy as np
import pytest
import tensorflow as tf

from ccp import projection


def naive_greedy_k_center(candidates, centers, k):
    """Independent per-class loop of SPEC §5 in float64; returns picked indices [C, k]."""
    picks = []
    for q, s in zip(np.asarray(candidates, np.float64), np.asarray(centers, np.float64)):
        if len(s):
            dist = np.min(((q[:, None, :] - s[None, :, :]) ** 2).sum(-1), axis=1)
        else:
            dist = np.full(len(q), np.inf)
        chosen = []
        for _ in range(k):
            best = max(range(len(q)), key=lambda i: (dist[i], -i))  # ties: lowest index
            chosen.append(best)
            dist = np.minimum(dist, ((q - q[best]) ** 2).sum(-1))
        picks.append(chosen)
    return np.array(picks)


def _gather(candidates, indices):
    return np.stack([c[i] for c, i in zip(candidates, indices)])


@pytest.mark.parametrize("num_centers", [0, 1, 3])
def test_greedy_k_center_matches_naive_loop(num_centers):
    rng = np.random.default_rng(num_centers)
    candidates = rng.normal(size=(6, 9, 5)).astype(np.float32)
    centers = rng.normal(size=(6, num_centers, 5)).astype(np.float32)
    expected = naive_greedy_k_center(candidates, centers, 4)
    indices, _ = projection.greedy_k_center_indices(candidates, centers, 4)
    np.testing.assert_array_equal(indices.numpy(), expected)
    picked = projection.greedy_k_center(candidates, centers, 4).numpy()
    np.testing.assert_array_equal(picked, _gather(candidates, expected))


def test_greedy_k_center_ties_go_to_lowest_index():
    # Integer grid points: many exactly equal distances.
    candidates = np.array([[[1, 0], [0, 1], [-1, 0], [0, -1], [1, 0], [2, 0]],
                           [[0, 0], [0, 0], [0, 0], [3, 3], [3, 3], [-3, -3]]], np.float32)
    centers = np.zeros((2, 1, 2), np.float32)
    expected = naive_greedy_k_center(candidates, centers, 4)
    indices, _ = projection.greedy_k_center_indices(candidates, centers, 4)
    np.testing.assert_array_equal(indices.numpy(), expected)
    # Class 0: (2,0) is farthest from the zero cover (index 5); then every other point is at
    # squared distance 1 from the cover -> the lowest index each time: 0, 1, 2.
    np.testing.assert_array_equal(indices.numpy()[0], [5, 0, 1, 2])
    # Class 1: (3,3), (3,3), (-3,-3) tie at 18 -> index 3; then (-3,-3) (index 5, 72 from (3,3)
    # but 18 from the cover); then all remaining distances are 0 -> index 0, and again 0 (SPEC:
    # the literal greedy rule; a pool with fewer distinct points than K repeats a pick).
    np.testing.assert_array_equal(indices.numpy()[1], [3, 5, 0, 0])


def test_zero_cover_starts_from_farthest_and_empty_cover_from_index_zero():
    candidates = np.array([[[0.1, 0.0], [5.0, 0.0], [0.0, 0.2]]], np.float32)
    zero = projection.greedy_k_center(candidates, np.zeros((1, 1, 2), np.float32), 1).numpy()
    np.testing.assert_array_equal(zero[0, 0], [5.0, 0.0])
    empty = projection.greedy_k_center(candidates, np.zeros((1, 0, 2), np.float32), 1).numpy()
    np.testing.assert_array_equal(empty[0, 0], candidates[0, 0])


@pytest.mark.slow  # an XLA compilation: make test, not test-fast
def test_greedy_k_center_xla_and_tf_function():
    rng = np.random.default_rng(3)
    candidates = tf.constant(rng.normal(size=(4, 7, 3)), tf.float32)
    centers = tf.constant(rng.normal(size=(4, 2, 3)), tf.float32)
    eager = projection.greedy_k_center(candidates, centers, 3)
    compiled = tf.function(lambda c, s: projection.greedy_k_center(c, s, 3), jit_compile=True)
    np.testing.assert_allclose(compiled(candidates, centers).numpy(), eager.numpy())


def test_greedy_k_center_rejects_non_finite_pool_naming_the_classes():
    candidates = np.random.default_rng(0).normal(size=(4, 6, 3)).astype(np.float32)
    candidates[1, 2, 0] = np.nan
    candidates[3, 0, 1] = np.inf
    with pytest.raises(ValueError, match=r"2 of 4 classes \(class indices 1, 3\).*learning rate"):
        projection.greedy_k_center(candidates, np.zeros((4, 1, 3), np.float32), 2)
    owner = FakeProxyOwner(4, 2, 3)
    with pytest.raises(ValueError, match="non-finite"):
        projection.rebuild_proxy_bank(owner, candidates, np.zeros((4, 1, 3), np.float32))


def test_greedy_k_center_rejects_small_pool():
    with pytest.raises(ValueError, match="b\\*K"):
        projection.greedy_k_center(np.zeros((2, 3, 4), np.float32),
                                   np.zeros((2, 1, 4), np.float32), 4)


def test_pool_rounds_rule():
    assert projection.pool_rounds(12, 8) == 12
    assert projection.pool_rounds(7, 4) == 7
    assert projection.pool_rounds(3, 4) == 12


def _expansion_distance_bound(a, b):
    """Largest float32 error of ``sqrt(|a|^2 + |b|^2 - 2 a.b)`` between rows ``a [..., P, D]``
    and ``b [..., M, D]``, from the formula (not from one machine's output).

    Each of ``|a|^2``, ``|b|^2``, ``a.b`` is a float32 sum of ``D`` products: error at most
    ``D eps`` times the sum of the magnitudes (|a|^2, |b|^2, |a||b|, any summation order, so
    any matmul blocking / oneDNN choice), plus ``3 eps`` for the two additions and the scaling:
    ``delta(d^2) <= (D + 3) eps (|a| + |b|)^2``; the square root halves the relative error,
    ``delta(d) <= delta(d^2) / (2 d)`` (first order, d well away from 0 here).
    """
    eps = np.finfo(np.float32).eps
    dim = a.shape[-1]
    na = np.linalg.norm(a.astype(np.float64), axis=-1)[..., :, None]
    nb = np.linalg.norm(b.astype(np.float64), axis=-1)[..., None, :]
    d = np.sqrt(((a[..., :, None, :].astype(np.float64) - b[..., None, :, :]) ** 2).sum(-1))
    return d, (dim + 3) * eps * (na + nb) ** 2 / (2.0 * np.maximum(d, 1e-3))


def _difference_distance_rtol(dim):
    """Relative float32 error of ``sqrt(sum_d (a_d - b_d)^2)``: each difference and square is
    correctly rounded (``2 eps`` relative on each term), the sum of ``D`` non-negative terms adds
    at most ``(D - 1) eps`` relative, the square root halves it and adds ``eps/2``:
    ``<= ((D + 1) / 2 + 1) eps``, for any summation order; a mean of such distances keeps it."""
    return ((dim + 1) / 2.0 + 1.0) * np.finfo(np.float32).eps


def test_covering_radius_and_proxy_distance_vs_numpy():
    rng = np.random.default_rng(4)
    points = rng.normal(size=(3, 6, 4)).astype(np.float32)
    centers = rng.normal(size=(3, 2, 4)).astype(np.float32)
    d, bound = _expansion_distance_bound(points, centers)
    np.testing.assert_allclose(projection.covering_radius(points, centers).numpy(),
                               d.min(-1).max(-1), rtol=0, atol=bound.max())
    pd = np.sqrt(((centers[:, :, None].astype(np.float64) - centers[:, None]) ** 2).sum(-1))
    np.testing.assert_allclose(projection.mean_proxy_distance(centers).numpy(),
                               pd.sum((1, 2)) / 2, rtol=_difference_distance_rtol(4))


def test_mean_proxy_distance_of_identical_proxies_is_exactly_zero():
    # Long vectors: the |p|^2 + |p|^2 - 2 p.p residue (~1e-4 after the sqrt) would show.
    proxies = np.tile(np.random.default_rng(1).normal(size=(2, 1, 64)) * 30, (1, 3, 1))
    np.testing.assert_array_equal(projection.mean_proxy_distance(proxies.astype(np.float32)),
                                  np.zeros(2, np.float32))
    rows = np.random.default_rng(2).normal(size=(1, 3, 64)).astype(np.float32) * 30
    single = projection.mean_proxy_distance(rows).numpy()
    d = np.sqrt(((rows[0][:, None].astype(np.float64) - rows[0][None]) ** 2).sum(-1))
    np.testing.assert_allclose(single, [d.sum() / 6], rtol=_difference_distance_rtol(64))


def test_greedy_k_center_duplicates_tie_to_the_lowest_index():
    """Duplicate pool embeddings are exactly at distance 0 from each other, so SPEC's
    lowest-index rule decides, not a matmul's rounding residue (which differs per row position
    under oneDNN / AVX-512 blocking)."""
    rng = np.random.default_rng(7)
    a, b = rng.normal(size=(2, 96)).astype(np.float32) * np.float32(25.0)
    if np.sum(a.astype(np.float64) ** 2) < np.sum(b.astype(np.float64) ** 2):
        a, b = b, a  # a is the farther from the zero cover
    pool = np.stack([b, a, b, a, b, a, b])[None]  # [1, 7, 96]
    cover = np.zeros((1, 1, 96), np.float32)
    indices, min_dist = projection.greedy_k_center_indices(pool, cover, 4)
    # a (first at index 1), then b (index 0); then every candidate is at exactly 0: index 0.
    np.testing.assert_array_equal(indices.numpy(), [[1, 0, 0, 0]])
    np.testing.assert_array_equal(indices.numpy(), naive_greedy_k_center(pool, cover, 4))
    np.testing.assert_array_equal(min_dist.numpy(), np.zeros((1, 7), np.float32))


# ----------------------------------------------------------------------------------------------
# Proximal term.
# ----------------------------------------------------------------------------------------------


class FakeProxyOwner:
    """Stands in for a CCP loss: proxies [C*K, D] class-major (row c*K + k)."""

    def __init__(self, num_classes, per_class, size, seed=0):
        self.shape = (num_classes, per_class, size)
        init = np.random.default_rng(seed).normal(size=(num_classes * per_class, size))
        self.proxies = tf.Variable(init.astype(np.float32))

    def proxies_by_class(self):
        return tf.reshape(self.proxies, self.shape)

    def assign_proxies(self, new):
        self.proxies.assign(tf.reshape(tf.cast(new, tf.float32), self.proxies.shape))


def test_proximal_term_matches_hand_computation():
    w1 = tf.Variable([1.0, -2.0, 3.0])
    w2 = tf.Variable([[0.5, 0.5]])
    proxy = tf.Variable([[9.0, 9.0]])
    anchor = projection.ProximalAnchor([w1, w2], lambda_0=0.3)
    anchor.w_prev[0].assign([0.0, 0.0, 1.0])
    anchor.w_prev[1].assign([[1.5, -0.5]])
    anchor.lambda_t.assign(0.3)
    transform = anchor.gradient_transform()
    grads = [tf.constant([0.1, 0.2, 0.3]), None, tf.constant([[1.0, 1.0]])]
    out = transform(grads, [w1, w2, proxy])
    np.testing.assert_allclose(out[0].numpy(), [0.1 + 0.3 * 1.0, 0.2 + 0.3 * -2.0, 0.3 + 0.3 * 2])
    assert out[1] is None
    np.testing.assert_array_equal(out[2].numpy(), [[1.0, 1.0]])  # proxies: no proximal term
    out2 = transform([tf.zeros([3]), tf.zeros([1, 2]), None], [w1, w2, proxy])
    np.testing.assert_allclose(out2[1].numpy(), [[0.3 * -1.0, 0.3 * 1.0]])
    anchor.lambda_t.assign(0.0)  # first instance: no term
    np.testing.assert_array_equal(transform([tf.zeros([3])], [w1])[0].numpy(), np.zeros(3))


def test_proximal_coefficient_and_anchor_move():
    assert projection.proximal_coefficient(2e-4, 0.5, 0) == 0.0
    assert projection.proximal_coefficient(2e-4, 0.5, 2) == pytest.approx(5e-5)
    w = tf.Variable([1.0, 2.0])
    anchor = projection.ProximalAnchor([w], lambda_0=2e-4, decay=0.5)
    anchor.remember_best()
    w.assign([5.0, 6.0])
    anchor.move_to_best(2)
    np.testing.assert_array_equal(anchor.w_prev[0].numpy(), [1.0, 2.0])
    assert float(anchor.lambda_t.numpy()) == pytest.approx(5e-5)
    assert anchor.anchor_for(tf.Variable([0.0])) is None


# ----------------------------------------------------------------------------------------------
# The schedule on scripted MAP@R traces: pure Python, no TensorFlow variables.
# ----------------------------------------------------------------------------------------------

C, K, D = 3, 2, 4
TRACE = [0.10, 0.20, 0.20, 0.15, 0.2000005, 0.05, 0.04, 0.06, 0.01, 0.01, 0.01, 0.5]


def schedule_trace(values, **kwargs):
    """Feeds ``values`` to a bare ProjectionSchedule; returns it, the actions, the summaries."""
    schedule = projection.ProjectionSchedule(**kwargs)
    actions, summaries = [], []
    for value in values:
        actions.append(schedule.update(value))
        if actions[-1] == projection.PROJECT:
            summaries.append(schedule.end_instance())
    assert not any(isinstance(v, tf.Variable) for v in vars(schedule).values())
    return schedule, actions, summaries


def test_schedule_decisions_on_a_metric_trace():
    schedule, actions, summaries = schedule_trace(TRACE, patience=3)
    assert actions == ["new_best", "new_best", "continue", "continue", "project",
                       "new_best", "continue", "new_best", "continue", "continue", "project",
                       "new_best"]
    assert [i + 1 for i, a in enumerate(actions) if a == projection.PROJECT] == [5, 11]
    assert schedule.instance == 2
    assert [s.next_instance for s in summaries] == [1, 2]
    assert summaries[0].best_value == pytest.approx(0.2) and summaries[0].epochs == 5
    assert summaries[1].best_value == pytest.approx(0.06) and summaries[1].had_best


def test_schedule_monitor_lag_min_epochs_and_nan_without_variables():
    _, lagged, _ = schedule_trace(TRACE, patience=3, monitor_lag=1)
    assert lagged[:6] == ["continue", "new_best", "new_best", "continue", "continue", "project"]
    values = [0.5, 0.1, 0.1, 0.1, 0.1]
    _, actions1, _ = schedule_trace(values, patience=3, min_epochs_per_instance=1)
    _, actions2, _ = schedule_trace(values, patience=3, min_epochs_per_instance=2)
    assert [i + 1 for i, a in enumerate(actions1) if a == "project"] == [4]
    assert [i + 1 for i, a in enumerate(actions2) if a == "project"] == [5]
    _, with_nan, _ = schedule_trace([0.3, float("nan"), 0.2, 0.2, 0.2], patience=3)
    assert with_nan == ["new_best", "continue", "continue", "continue", "project"]


def test_schedule_state_round_trip():
    schedule, _, _ = schedule_trace(TRACE[:7], patience=3, monitor_lag=1)
    state = schedule.get_state()
    copy = projection.ProjectionSchedule(patience=3, monitor_lag=1)
    copy.set_state(state)
    for value in TRACE[7:]:
        assert copy.update(value) == schedule.update(value)
    assert copy.get_state() == schedule.get_state()


# ----------------------------------------------------------------------------------------------
# The projection acting on the schedule: anchor, proxies, pools.
# ----------------------------------------------------------------------------------------------


def _pool(index):
    rng = np.random.default_rng(100 + index)
    return rng.normal(size=(C, 5, D)).astype(np.float32)


def run_trace(values, **kwargs):
    """Feeds ``values``; before epoch e the 'model' weights and proxies are set to e."""
    w = tf.Variable(np.zeros((2, 2), np.float32))
    owner = FakeProxyOwner(C, K, D)
    proj = projection.AlternatingProjection([w], owner, pool_size=5, **kwargs)
    pool_calls, log = [], []

    def pool_fn(index):
        pool_calls.append(index)
        return _pool(index)

    for epoch, value in enumerate(values, start=1):
        w.assign(np.full((2, 2), epoch, np.float32))
        before = owner.proxies.numpy().copy()
        if not log or log[-1]["action"] != projection.PROJECT:
            owner.proxies.assign(np.full((C * K, D), epoch, np.float32))
            before = owner.proxies.numpy().copy()
        decision = proj.on_epoch_end(value, pool_fn)
        log.append({"epoch": epoch, "action": decision.action, "event": decision.event,
                    "lambda": float(proj.lambda_t.numpy()), "w_prev": proj.w_prev[0].numpy()[0, 0],
                    "proxies_before": before, "proxies_after": owner.proxies.numpy().copy()})
    return proj, log, pool_calls


def test_schedule_instances_lambda_and_anchor():
    proj, log, pool_calls = run_trace(TRACE, lambda_0=2e-4, decay=0.5, patience=3)
    actions = [entry["action"] for entry in log]
    assert actions == ["new_best", "new_best", "continue", "continue", "project",
                       "new_best", "continue", "new_best", "continue", "continue", "project",
                       "new_best"]
    projected = [entry["epoch"] for entry in log if entry["action"] == projection.PROJECT]
    assert projected == [5, 11]
    assert pool_calls == [1, 2]
    lambdas = [entry["lambda"] for entry in log]
    np.testing.assert_allclose(lambdas[:4], 0.0)  # first instance: no proximal term
    np.testing.assert_allclose(lambdas[4:10], 2e-4 * 0.5, rtol=1e-6)
    np.testing.assert_allclose(lambdas[10:], 2e-4 * 0.25, rtol=1e-6)
    # w_prev = the best snapshot of the instance: epoch 2, then epoch 8.
    assert log[4]["w_prev"] == 2.0 and log[10]["w_prev"] == 8.0
    assert log[3]["w_prev"] == 0.0  # untouched before the first projection
    assert proj.schedule.instance == 2
    assert log[4]["event"]["instance"] == 1 and log[10]["event"]["instance"] == 2
    assert log[4]["event"]["best_value"] == pytest.approx(0.2)


def test_projection_proxies_are_k_center_picks_from_best_cover():
    _, log, _ = run_trace(TRACE, patience=3)
    for entry, best_epoch, index in ((log[4], 2, 1), (log[10], 8, 2)):
        new = entry["proxies_after"].reshape(C, K, D)
        assert not np.allclose(new, entry["proxies_before"].reshape(C, K, D))
        pool = _pool(index)
        for c in range(C):  # every new proxy is a row of the class's pool
            for row in new[c]:
                assert np.any(np.all(pool[c] == row, axis=1))
        cover = np.full((C, K, D), best_epoch, np.float32)  # the instance's best proxies
        expected = _gather(pool, naive_greedy_k_center(pool, cover, K))
        np.testing.assert_array_equal(new, expected)
        assert entry["event"]["radius_after"] < entry["event"]["radius_before"]
        assert entry["event"]["pool_size"] == 5


def test_monitor_lag_reacts_one_epoch_late():
    proj, log, _ = run_trace(TRACE, patience=3, monitor_lag=1)
    actions = [entry["action"] for entry in log]
    assert actions[:6] == ["continue", "new_best", "new_best", "continue", "continue", "project"]
    # The "best" snapshot is taken one epoch late: the weights of epoch 3 (value of epoch 2).
    assert log[5]["w_prev"] == 3.0
    np.testing.assert_allclose(log[5]["lambda"], 2e-4, rtol=1e-6)


def test_min_iterations_skips_first_epochs_of_an_instance():
    values = [0.5, 0.1, 0.1, 0.1, 0.1]
    _, log1, _ = run_trace(values, patience=3, min_epochs_per_instance=1)
    _, log2, _ = run_trace(values, patience=3, min_epochs_per_instance=2)
    assert [e["epoch"] for e in log1 if e["action"] == "project"] == [4]
    assert [e["epoch"] for e in log2 if e["action"] == "project"] == [5]
    assert log2[4]["w_prev"] == 2.0


def test_nan_values_are_ignored():
    _, log, _ = run_trace([0.3, float("nan"), 0.2, 0.2, 0.2], patience=3)
    assert [e["action"] for e in log] == ["new_best", "continue", "continue", "continue",
                                          "project"]


def test_initial_proxies_from_zero_cover_and_random_init():
    owner = FakeProxyOwner(C, K, D)
    proj = projection.AlternatingProjection([tf.Variable(np.zeros(2, np.float32))], owner,
                                            pool_size=5)
    calls = []
    event = proj.initialize_proxies(lambda i: calls.append(i) or _pool(7))
    assert calls == [0] and event["event"] == "proxy_init"
    pool = _pool(7)
    expected = _gather(pool, naive_greedy_k_center(pool, np.zeros((C, 1, D)), K))
    np.testing.assert_array_equal(owner.proxies_by_class().numpy(), expected)
    assert proj.initialize_proxies(lambda i: _pool(8)) is None  # only once
    np.testing.assert_array_equal(owner.proxies_by_class().numpy(), expected)

    owner2 = FakeProxyOwner(C, K, D, seed=5)
    before = owner2.proxies.numpy().copy()
    proj2 = projection.AlternatingProjection([tf.Variable(np.zeros(2, np.float32))], owner2,
                                             random_init=True)
    event2 = proj2.initialize_proxies(lambda i: pytest.fail("pool must not be drawn"))
    assert event2["random_init"] is True
    np.testing.assert_array_equal(owner2.proxies.numpy(), before)


def test_pool_shape_is_checked():
    owner = FakeProxyOwner(C, 4, D)
    proj = projection.AlternatingProjection([tf.Variable(np.zeros(2, np.float32))], owner,
                                            pool_size=3)
    with pytest.raises(ValueError, match="12"):  # b=3 < K=4: the pool needs b*K = 12 rows
        proj.initialize_proxies(lambda i: np.zeros((C, 3, D), np.float32))
    proj.initialize_proxies(lambda i: np.random.default_rng(0).normal(size=(C, 12, D)))


def test_schedule_state_survives_a_checkpoint(tmp_path):
    proj, _, _ = run_trace(TRACE[:7], patience=3, lambda_0=1e-3)
    checkpoint = tf.train.Checkpoint(projection=proj)
    path = checkpoint.save(str(tmp_path / "ckpt"))
    state = proj.state_dict()
    w_prev = proj.w_prev[0].numpy().copy()
    proj.schedule.instance = 9
    proj.w_prev[0].assign(np.full((2, 2), -1.0, np.float32))
    proj.lambda_t.assign(5.0)
    checkpoint.restore(path).assert_consumed()
    assert proj.state_dict() == state
    np.testing.assert_array_equal(proj.w_prev[0].numpy(), w_prev)
    assert not math.isnan(state["lambda"]) and state["instance"] == 1
