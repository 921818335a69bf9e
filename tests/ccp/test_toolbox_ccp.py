"""CCP options of the reference: loss-type/min monitor, fixed intervals, w_prev noise, greedy
k-center on normalized embeddings, another monitored metric."""
import numpy as np
import pytest
import tensorflow as tf

from ccp import projection
from ccp.projection import CONTINUE, NEW_BEST, PROJECT, ProjectionSchedule
from ccp.training import trainer as trainer_lib


def test_schedule_stops_at_the_minimum_of_a_loss_trace():
    schedule = ProjectionSchedule(patience=2, min_epochs_per_instance=1, min_delta=0.01,
                                  mode="min")
    trace = [5.0, 4.0, 3.995, 4.6, 3.0]  # 3.995 is within min_delta of 4.0
    assert [schedule.update(v) for v in trace[:4]] == [NEW_BEST, NEW_BEST, CONTINUE, PROJECT]
    summary = schedule.end_instance()
    assert summary.best_value == 4.0 and summary.epochs == 4
    assert schedule.update(trace[4]) == NEW_BEST


def test_schedule_fixed_interval_ignores_values():
    schedule = ProjectionSchedule(patience=1, fixed_interval=3)
    actions = []
    for value in [0.1, 0.9, 0.2, 0.95, 0.99, 0.1]:
        action = schedule.update(value)
        actions.append(action)
        if action == PROJECT:
            schedule.end_instance()
    assert actions == [CONTINUE, CONTINUE, PROJECT] * 2 and schedule.instance == 2
    assert ProjectionSchedule(fixed_interval=0).fixed_interval is None  # 0 = off, as the flag
    with pytest.raises(ValueError, match="fixed_interval"):
        ProjectionSchedule(fixed_interval=-1)


def _numpy_normalized_kcenter(pool, cover, k):
    out = []
    for c in range(pool.shape[0]):
        p = pool[c] / np.maximum(np.linalg.norm(pool[c], axis=1, keepdims=True), 1e-6)
        q = cover[c] / np.maximum(np.linalg.norm(cover[c], axis=1, keepdims=True), 1e-6)
        dist = [min(float(np.sum((p[i] - s) ** 2)) for s in q) for i in range(len(p))]
        picks = []
        for _ in range(k):
            best = max(range(len(p)), key=lambda i: (dist[i], -i))  # lowest index on ties
            picks.append(pool[c][best])
            dist = [min(dist[i], float(np.sum((p[i] - p[best]) ** 2))) for i in range(len(p))]
        out.append(picks)
    return np.array(out)


def test_greedy_k_center_on_normalized_embeddings():
    rng = np.random.default_rng(0)
    pool = rng.normal(size=(3, 9, 4)) * rng.uniform(0.1, 10.0, size=(3, 9, 1))
    cover = rng.normal(size=(3, 2, 4))
    got = projection.greedy_k_center(pool, cover, 3, normalized=True).numpy()
    np.testing.assert_allclose(got, _numpy_normalized_kcenter(pool, cover, 3), rtol=1e-6)
    # a long vector along the cover's direction is far in raw distance, not once normalized
    case = np.array([[[10.0, 0.0], [0.0, 1.0]]])
    start = np.array([[[1.0, 0.0]]])
    np.testing.assert_array_equal(projection.greedy_k_center(case, start, 1).numpy(), [[[10, 0]]])
    np.testing.assert_array_equal(
        projection.greedy_k_center(case, start, 1, normalized=True).numpy(), [[[0, 1]]])


def _weights():
    return [tf.Variable(np.random.default_rng(1).normal(size=(200, 50)), dtype=tf.float32)]


def test_projection_noise_on_w_prev_and_fixed_interval():
    weights = _weights()
    proj = projection.AlternatingProjection(weights, None, lambda_0=1.0, decay=0.5,
                                            fixed_interval=2, perturb_noise=0.1, noise_seed=7)
    start = weights[0].numpy().copy()
    assert proj.on_epoch_end(0.5).action == CONTINUE
    weights[0].assign_add(tf.ones_like(weights[0]))
    decision = proj.on_epoch_end(0.1)
    assert decision.action == PROJECT and decision.event["best_value"] is None  # no comparison
    best = start + 1.0  # the weights at the projection (no early stopping)
    rms = np.sqrt(np.mean(best ** 2))
    z = (proj.w_prev[0].numpy() - best) / rms
    assert abs(z.mean()) < 0.01 and abs(z.std() - 0.1) < 0.005
    again = projection.AlternatingProjection(_weights(), None, fixed_interval=1,
                                             perturb_noise=0.1, noise_seed=7)
    again.model_variables[0].assign(best)
    again.on_epoch_end(0.0)
    other = (again.w_prev[0].numpy() - best) / rms  # instance 1 both times, same seed
    np.testing.assert_allclose(other, z, atol=1e-5)
    plain = projection.AlternatingProjection(_weights(), None, fixed_interval=1)
    plain.on_epoch_end(0.0)
    np.testing.assert_array_equal(plain.w_prev[0].numpy(), plain.model_variables[0].numpy())


def test_trainer_feeds_the_monitored_metric():
    record = {"loss": 2.5, "val_map_at_r": 0.3, "val_precision_at_1": 0.6,
              "val_recall_at_4": 0.8}
    loss_proj = projection.AlternatingProjection(_weights(), None, monitor="loss")
    assert loss_proj.schedule.tracker.mode == "min"  # a loss stops at its minimum
    assert trainer_lib._monitored(loss_proj, 0.3, record) == 2.5
    p1 = projection.AlternatingProjection(_weights(), None, monitor="precision_at_1")
    assert p1.schedule.tracker.mode == "max"
    assert trainer_lib._monitored(p1, 0.3, record) == 0.6
    r4 = projection.AlternatingProjection(_weights(), None, monitor="recall_at_4")
    assert trainer_lib._monitored(r4, 0.3, record) == 0.8
    bad = projection.AlternatingProjection(_weights(), None, monitor="recall_at_3")
    with pytest.raises(ValueError, match="monitor="):
        trainer_lib._monitored(bad, 0.3, record)
