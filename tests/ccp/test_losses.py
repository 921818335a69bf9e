"""Every loss vs an independent float64 numpy reference written with explicit loops (SPEC §4).

Gradients are checked against central finite differences of the numpy reference.
"""
import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf

from ccp import losses
from tests.ccp.loss_testing import (assert_config_round_trip, batch, lip, numeric_grad,
                                     tf_value_and_grads)


# ----------------------------------------------------------------------------- references
def pairs(labels, ref_labels):
    """(i, j, positive?) for every valid pair; ref None = same set without self-pairs."""
    same = ref_labels is None
    ref = labels if same else ref_labels
    for i, j in itertools.product(range(len(labels)), range(len(ref))):
        if (same and i == j) or labels[i] < 0 or ref[j] < 0:
            continue
        yield i, j, labels[i] == ref[j]


def dist(a, b):
    return float(np.sqrt(np.sum((a - b) ** 2)))


def ref_c2(x, y, r=None, ry=None, pos_margin=0.0, neg_margin=0.5):
    r_ = x if r is None else r
    pos, neg = [], []
    for i, j, same in pairs(y, ry):
        d = dist(x[i], r_[j])
        (pos if same else neg).append(d - pos_margin if same else neg_margin - d)
    pos = [t for t in pos if t > 0]
    neg = [t for t in neg if t > 0]
    return sum(pos) / (len(pos) + 1e-16) + sum(neg) / (len(neg) + 1e-16)


def ref_c1(x, y, r=None, ry=None, margin=0.5):
    r_ = x if r is None else r
    total = 0.0
    for i, j, same in pairs(y, ry):
        s = float(np.dot(x[i], r_[j]))
        total += max(1 - 1e-5 - s, 0.0) if same else max(s - margin, 0.0)
    return total / len(x)


def ref_triplet(x, y, r=None, ry=None, margin=0.1):
    r_ = x if r is None else r
    ref = y if ry is None else ry
    terms = []
    for a in range(len(x)):
        for p in range(len(r_)):
            for n in range(len(r_)):
                if ry is None and p == a:
                    continue
                if ref[p] != y[a] or ref[n] == y[a] or ref[p] < 0 or ref[n] < 0:
                    continue
                t = dist(x[a], r_[p]) - dist(x[a], r_[n]) + margin
                if t > 0:
                    terms.append(t)
    return sum(terms) / (len(terms) + 1e-16)


def ref_ms(x, y, r=None, ry=None, alpha=2.0, beta=40.0, base=0.5):
    r_ = x if r is None else r
    total = 0.0
    for i in range(len(x)):
        pos = sum(np.exp(-alpha * (np.dot(x[i], r_[j]) - base))
                  for a, j, s in pairs(y, ry) if a == i and s)
        neg = sum(np.exp(beta * (np.dot(x[i], r_[j]) - base))
                  for a, j, s in pairs(y, ry) if a == i and not s)
        total += np.log(1 + pos) / alpha + np.log(1 + neg) / beta
    return total / len(x)


def ref_margin(x, y, margin=0.2, beta=1.2, nu=0.0):
    pos, neg = [], []
    for i, j, same in pairs(y, None):
        d = dist(x[i], x[j])
        t = margin + (d - beta if same else beta - d)
        if t > 0:
            (pos if same else neg).append(t)
    return sum(pos) / (len(pos) + 1e-16) + sum(neg) / (len(neg) + 1e-16) + nu * beta


def ref_proxy_anchor(x, y, proxies, proxy_labels, margin=0.1, alpha=32.0):
    pos_total, neg_total, n_pos, n_neg = 0.0, 0.0, 0, 0
    for p, label in enumerate(proxy_labels):
        sims = [float(np.dot(proxies[p], x[i])) for i in range(len(x))]
        pos = [s for s, lab in zip(sims, y) if lab == label]
        neg = [s for s, lab in zip(sims, y) if lab != label]
        if pos:
            pos_total += np.log(1 + sum(np.exp(-alpha * (s - margin)) for s in pos))
            n_pos += 1
        if neg:
            neg_total += np.log(1 + sum(np.exp(alpha * (s + margin)) for s in neg))
            n_neg += 1
    return pos_total / max(n_pos, 1) + neg_total / max(n_neg, 1)


def ref_proxy_nca(x, y, proxies, proxy_labels, temperature=0.1):
    total = 0.0
    for i in range(len(x)):
        logits = np.array([np.dot(x[i], p) / temperature for p in proxies])
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        total += -np.log(1e-16 + sum(pr for pr, lab in zip(probs, proxy_labels) if lab == y[i]))
    return total / len(x)


def ref_soft_triple(x, y, centers, num_classes, k, lamda, gamma, tau, margin):
    total = 0.0
    for i in range(len(x)):
        logits = []
        for c in range(num_classes):
            s = np.array([np.dot(x[i], centers[c * k + t]) for t in range(k)])
            w = np.exp(s / gamma - np.max(s / gamma))
            w /= w.sum()
            logits.append(lamda * (np.dot(w, s) - (margin if c == y[i] else 0.0)))
        logits = np.array(logits)
        total += -(logits[y[i]] - logits.max() - np.log(np.sum(np.exp(logits - logits.max()))))
    reg = 0.0
    for c in range(num_classes):
        for t in range(k):
            for u in range(t + 1, k):
                reg += np.sqrt(
                    max(2 + 1e-10 - 2 * np.dot(centers[c * k + t], centers[c * k + u]), 0))
    reg /= num_classes * k * (k - 1)
    return total / len(x) + tau * reg


# ----------------------------------------------------------------------------- helpers
PAIR_CASES = {
    "c2": (lambda: losses.ContrastiveLoss(0.1, 0.7),
           lambda x, y, r=None, ry=None: ref_c2(x, y, r, ry, 0.1, 0.7)),
    "c1": (lambda: losses.CosineContrastiveLoss(0.2),
           lambda x, y, r=None, ry=None: ref_c1(x, y, r, ry, 0.2)),
    "triplet": (lambda: losses.TripletLoss(0.3),
                lambda x, y, r=None, ry=None: ref_triplet(x, y, r, ry, 0.3)),
    "ms": (lambda: losses.MultiSimilarityLoss(2.0, 10.0, 0.5),
           lambda x, y, r=None, ry=None: ref_ms(x, y, r, ry, 2.0, 10.0, 0.5)),
}


@pytest.mark.parametrize("name", sorted(PAIR_CASES))
def test_pair_loss_values_on_structured_and_random_batches(name):
    make, reference = PAIR_CASES[name]
    layer = make()
    x, y = batch(8, 4, 6, seed=1)
    assert float(layer(y, x)) == pytest.approx(reference(lip(x), y), rel=1e-4, abs=1e-6)
    rng = np.random.default_rng(2)
    y_random = rng.integers(0, 5, size=20)
    x_random = rng.normal(size=(20, 5)).astype(np.float32)
    assert float(layer(y_random[:, None], x_random)) == pytest.approx(
        reference(lip(x_random), y_random), rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("name", sorted(PAIR_CASES))
def test_pair_loss_gradients_match_finite_differences(name):
    make, reference = PAIR_CASES[name]
    x, y = batch(3, 3, 4, seed=3)
    _, (grad,) = tf_value_and_grads(make(), y, x)
    expected = numeric_grad(lambda v: reference(lip(v), y), x)
    np.testing.assert_allclose(grad, expected, rtol=2e-3, atol=2e-4)


@pytest.mark.parametrize("name", sorted(PAIR_CASES))
def test_single_class_batch_has_no_nan(name):
    make, reference = PAIR_CASES[name]
    x, y = batch(1, 5, 4, seed=4)
    value, (grad,) = tf_value_and_grads(make(), y, x)
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    assert value == pytest.approx(reference(lip(x), y), rel=1e-4, abs=1e-6)


def test_no_active_hinge_gives_zero_loss_and_gradient():
    # Two tight, far-apart clusters: every C2 and triplet hinge is inactive.
    x = np.array([[1, 0, 0], [1, 0.001, 0], [-1, 0, 0], [-1, 0, 0.001]], np.float32) * 3
    y = np.array([0, 0, 1, 1])
    for layer in (losses.ContrastiveLoss(0.05, 0.5), losses.TripletLoss(0.1)):
        value, (grad,) = tf_value_and_grads(layer, y, x)
        assert value == 0.0 and np.all(grad == 0.0)
    # Coinciding positives: zero distance, finite (zero) gradient.
    same = np.array([[2, 0], [2, 0], [0, 2]], np.float32)
    value, (grad,) = tf_value_and_grads(losses.ContrastiveLoss(0.0, 0.5), [0, 0, 1], same)
    assert np.all(np.isfinite(grad))


def test_ms_mining_keeps_only_hard_pairs():
    x, y = batch(4, 3, 5, seed=5)
    mined = float(losses.MultiSimilarityLoss(2.0, 10.0, 0.5, mining=True)(y, x))
    v = lip(x)
    total = 0.0
    for i in range(len(v)):
        s = v @ v[i]
        pos = [j for j in range(len(v)) if j != i and y[j] == y[i]]
        neg = [j for j in range(len(v)) if y[j] != y[i]]
        hard_neg = [j for j in neg if s[j] + 0.1 > min(s[pos])]
        hard_pos = [j for j in pos if s[j] - 0.1 < max(s[neg])]
        total += np.log(1 + sum(np.exp(-2 * (s[j] - 0.5)) for j in hard_pos)) / 2
        total += np.log(1 + sum(np.exp(10 * (s[j] - 0.5)) for j in hard_neg)) / 10
    assert mined == pytest.approx(total / len(v), rel=1e-4)


def test_margin_loss_value_and_beta_gradient():
    layer = losses.MarginLoss(margin=0.2, beta_init=0.9, nu=0.05)
    x, y = batch(3, 3, 4, seed=6)
    value, (gx, gbeta) = tf_value_and_grads(layer, y, x, extra=[layer.beta])
    assert value == pytest.approx(ref_margin(lip(x), y, 0.2, 0.9, 0.05), rel=1e-4)
    np.testing.assert_allclose(gx, numeric_grad(lambda v: ref_margin(lip(v), y, 0.2, 0.9, 0.05), x),
                               rtol=2e-3, atol=2e-4)
    numeric_beta = (ref_margin(lip(x), y, 0.2, 0.9 + 1e-5, 0.05)
                    - ref_margin(lip(x), y, 0.2, 0.9 - 1e-5, 0.05)) / 2e-5
    assert float(gbeta) == pytest.approx(numeric_beta, rel=1e-3, abs=1e-4)


PROXY_CASES = {
    "proxy_anchor": (lambda: losses.ProxyAnchorLoss(4, 5, margin=0.1, alpha=8.0, seed=1),
                     lambda x, y, p, pl: ref_proxy_anchor(x, y, p, pl, 0.1, 8.0)),
    "proxy_nca": (lambda: losses.ProxyNCALoss(4, 5, temperature=0.5, seed=1),
                  lambda x, y, p, pl: ref_proxy_nca(x, y, p, pl, 0.5)),
    "soft_triple": (lambda: losses.SoftTripleLoss(4, 5, centers_per_class=3, lamda=5.0, gamma=0.5,
                                                  tau=0.2, margin=0.1, seed=1),
                    lambda x, y, p, pl: ref_soft_triple(x, y, p, 4, 3, 5.0, 0.5, 0.2, 0.1)),
}


@pytest.mark.parametrize("name", sorted(PROXY_CASES))
def test_proxy_loss_value_and_gradients(name):
    make, reference = PROXY_CASES[name]
    layer = make()
    x, y = batch(4, 2, 5, seed=7)
    proxies = np.asarray(layer.proxies, np.float64)
    labels = np.asarray(layer.proxy_labels)
    value, (gx, gp) = tf_value_and_grads(layer, y, x, extra=[layer.proxies])
    assert value == pytest.approx(reference(lip(x), y, lip(proxies), labels), rel=1e-4)
    np.testing.assert_allclose(
        gx, numeric_grad(lambda v: reference(lip(v), y, lip(proxies), labels), x),
        rtol=3e-3, atol=3e-4)
    np.testing.assert_allclose(
        gp, numeric_grad(lambda p: reference(lip(x), y, lip(p), labels), proxies),
        rtol=3e-3, atol=3e-4)


@pytest.mark.parametrize("name", sorted(PAIR_CASES))
def test_ccp_wraps_each_pair_loss(name):
    make, reference = PAIR_CASES[name]
    layer = losses.CCPLoss(make(), num_classes=3, embedding_size=4, proxies_per_class=2,
                           pair_weight=0.1, proxy_weight=1.0)
    rng = np.random.default_rng(8)
    layer.assign_proxies(rng.normal(size=(3, 2, 4)))
    x, y = batch(3, 3, 4, seed=9)
    proxies = np.asarray(layer.proxies, np.float64)
    labels = np.repeat(np.arange(3), 2)
    np.testing.assert_array_equal(layer.proxy_labels, labels)  # class-major layout

    def full(v, p):
        return 0.1 * reference(lip(v), y) + 1.0 * reference(lip(v), y, lip(p), labels)

    value, (gx, gp) = tf_value_and_grads(layer, y, x, extra=[layer.proxies])
    assert value == pytest.approx(full(x, proxies), rel=1e-4, abs=1e-6)
    np.testing.assert_allclose(gx, numeric_grad(lambda v: full(v, proxies), x),
                               rtol=3e-3, atol=3e-4)
    np.testing.assert_allclose(gp, numeric_grad(lambda p: full(x, p), proxies),
                               rtol=3e-3, atol=3e-4)
    terms = layer.loss_terms(y, x)
    assert float(terms["loss"]) == pytest.approx(
        0.1 * float(terms["pair"]) + float(terms["proxy"]), rel=1e-6)
    np.testing.assert_allclose(layer.proxies_by_class().numpy()[1, 0], proxies[2], rtol=1e-6)
    with pytest.raises(ValueError, match="proxies must have shape"):
        layer.assign_proxies(np.zeros((3, 3, 4)))


def test_xbm_queue_semantics():
    base = losses.ContrastiveLoss(0.0, 0.5)
    xbm = losses.CrossBatchMemory(base, embedding_size=3, memory_size=5, start_at=1,
                                  delay_until_full=False)
    a = np.array([[3, 0, 0], [0, 3, 0]], np.float32)
    b = np.array([[0, 0, 3], [3, 3, 0], [1, 0, 0]], np.float32)
    first = xbm.loss_terms([0, 1], a, training=True)
    assert float(first["memory"]) == 0.0  # step 0 < start_at
    np.testing.assert_array_equal(xbm.memory_labels.numpy(), [0, 1, -1, -1, -1])
    second = xbm.loss_terms([2, 0, 1], b, training=True)
    # The batch is enqueued before the memory term (XBM paper, reference): memory = a + b.
    expected_memory = ref_c2(lip(b), np.array([2, 0, 1]), np.concatenate([lip(a), lip(b)]),
                             np.array([0, 1, 2, 0, 1]))
    assert float(second["memory"]) == pytest.approx(expected_memory, rel=1e-5)
    assert float(second["loss"]) == pytest.approx(
        ref_c2(lip(b), np.array([2, 0, 1])) + expected_memory, rel=1e-5)
    # FIFO wrap-around: 5 slots held [a0, a1, b0, b1, b2]; the next batch overwrites slots 0, 1.
    xbm.loss_terms([4, 4], a, training=True)
    np.testing.assert_array_equal(xbm.memory_labels.numpy(), [4, 4, 2, 0, 1])
    assert int(xbm.write_position.numpy()) == 2 and int(xbm.step.numpy()) == 3
    # Not training: nothing is written.
    xbm.loss_terms([3], a[:1], training=False)
    assert int(xbm.step.numpy()) == 3
    # A batch longer than the memory keeps its last rows.
    long = np.eye(3, dtype=np.float32)[[0, 1, 2, 0, 1, 2, 0]] * 2
    xbm.loss_terms(list(range(7)), long, training=True)
    assert sorted(xbm.memory_labels.numpy().tolist()) == [2, 3, 4, 5, 6]


def _xbm_memory_terms(steps, **kwargs):
    xbm = losses.CrossBatchMemory(losses.ContrastiveLoss(0.0, 0.5), embedding_size=3, **kwargs)
    x, y = batch(2, 2, 3, seed=21)  # B = 4
    return [float(xbm.loss_terms(y, x, training=True)["memory"]) for _ in range(steps)]


@pytest.mark.parametrize("memory_size, start_at, first", [
    (8, 3, 5),    # M = 2 batches: the reference's queue fills for 2 steps after step 3
    (12, 0, 3),   # M = 3
    (10, 2, 5),   # M = ceil(10 / 4) = 3
    (4, 0, 1),    # one batch of memory, no start delay: from the first step
])
def test_xbm_memory_term_starts_at_start_at_plus_memory_batches(memory_size, start_at, first):
    # The reference: its pointer counts calls from 1 and the term is on when
    # pointer >= start_at + batches_in_memory.
    terms = _xbm_memory_terms(first + 2, memory_size=memory_size, start_at=start_at)
    assert [t > 0 for t in terms] == [step >= first for step in range(1, first + 3)]
    plain = _xbm_memory_terms(first + 2, memory_size=memory_size, start_at=start_at,
                              delay_until_full=False)
    assert [t > 0 for t in plain] == [step >= start_at + 1 for step in range(1, first + 3)]


def test_xbm_state_is_in_layer_weights_and_checkpoints(tmp_path):
    xbm = losses.CrossBatchMemory(losses.ContrastiveLoss(), embedding_size=3, memory_size=4)
    names = {w.name for w in xbm.weights}
    assert {"memory_embeddings", "memory_labels", "write_position", "step"} <= names
    assert not xbm.trainable_weights
    x, y = batch(2, 2, 3, seed=22)
    xbm.loss_terms(y, x, training=True)
    checkpoint = tf.train.Checkpoint(loss=xbm)
    path = checkpoint.save(str(tmp_path / "ckpt"))
    restored = losses.CrossBatchMemory(losses.ContrastiveLoss(), embedding_size=3, memory_size=4)
    tf.train.Checkpoint(loss=restored).restore(path).assert_existing_objects_matched()
    np.testing.assert_array_equal(restored.memory_labels.numpy(), y)
    np.testing.assert_allclose(restored.memory_embeddings.numpy(), lip(x), rtol=1e-6)
    assert int(restored.step.numpy()) == 1 and int(restored.write_position.numpy()) == 0
    with pytest.raises(ValueError, match="start_at"):
        losses.CrossBatchMemory(losses.ContrastiveLoss(), 3, 4, start_at=-1)


@pytest.mark.slow
def test_xbm_under_mirrored_strategy_keeps_replicas_identical():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        xbm = losses.CrossBatchMemory(losses.ContrastiveLoss(), embedding_size=4, memory_size=6)
    x, y = batch(3, 2, 4, seed=13)

    @tf.function
    def step(labels, embeddings):
        return xbm.loss_terms(labels, embeddings, training=True)["loss"]

    for _ in range(2):
        values = strategy.experimental_local_results(strategy.run(step, args=(y, x)))
    assert values[0].numpy() == pytest.approx(values[1].numpy())
    # A Keras variable wraps the distributed tf.Variable in .value
    replicas = strategy.experimental_local_results(xbm.memory_labels.value)
    np.testing.assert_array_equal(replicas[0].numpy(), replicas[1].numpy())
    np.testing.assert_array_equal(np.sort(replicas[0].numpy()), np.sort(y))  # 6 slots, 6 samples


def test_xbm_forwards_the_ccp_interface():
    inner = losses.CCPLoss(losses.TripletLoss(0.1), 2, 3, proxies_per_class=2)
    xbm = losses.CrossBatchMemory(inner, 3, 4)
    assert xbm.proxies is inner.proxies and xbm.proxy_variables == [inner.proxies]
    xbm.assign_proxies(np.ones((2, 2, 3)))
    np.testing.assert_array_equal(inner.proxies_by_class().numpy(), np.ones((2, 2, 3)))


ALL_LAYERS = [
    lambda: losses.ContrastiveLoss(0.1, 0.6),
    lambda: losses.CosineContrastiveLoss(0.3),
    lambda: losses.TripletLoss(0.2),
    lambda: losses.MultiSimilarityLoss(3.0, 30.0, 0.4, mining=True),
    lambda: losses.MarginLoss(0.3, 1.1, num_classes=4),
    lambda: losses.ProxyAnchorLoss(4, 5),
    lambda: losses.ProxyNCALoss(4, 5, temperature=0.2),
    lambda: losses.SoftTripleLoss(4, 5, centers_per_class=2),
    lambda: losses.CCPLoss(losses.MultiSimilarityLoss(), 4, 5, proxies_per_class=3),
    lambda: losses.CrossBatchMemory(losses.ContrastiveLoss(), 5, 16, start_at=3),
    lambda: losses.CrossBatchMemory(losses.ContrastiveLoss(), 5, 16, delay_until_full=False),
]


@pytest.mark.parametrize("make", ALL_LAYERS)
def test_get_config_round_trip(make):
    assert_config_round_trip(make(), seed=10)


@pytest.mark.slow
def test_proxy_losses_inside_tf_function_and_mirrored_strategy():
    x, y = batch(4, 3, 5, seed=11)
    layer = losses.CCPLoss(losses.ContrastiveLoss(), 4, 5, proxies_per_class=2)
    eager = float(layer(y, x))
    assert float(tf.function(lambda a, b: layer(a, b))(y, x)) == pytest.approx(eager, rel=1e-6)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        mirrored = losses.CCPLoss(losses.ContrastiveLoss(), 4, 5, proxies_per_class=2)
    mirrored.assign_proxies(layer.proxies_by_class())
    per_replica = strategy.run(tf.function(lambda a, b: mirrored(a, b)), args=(y, x))
    for value in strategy.experimental_local_results(per_replica):
        assert float(value) == pytest.approx(eager, rel=1e-6)
    anchor = losses.ProxyAnchorLoss(4, 5)
    assert np.isfinite(float(tf.function(lambda a, b: anchor(a, b))(y, x)))


@pytest.mark.slow  # XLA-compiles the fused C2-CCP loss for its shapes: make test, not test-fast
def test_float16_inputs_under_mixed_precision_give_float32_loss():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        layer = losses.CCPLoss(losses.ContrastiveLoss(), 4, 5, proxies_per_class=2)
        x, y = batch(4, 2, 5, seed=12)
        value = layer(y, tf.constant(x, tf.float16))
        assert value.dtype == tf.float32
        assert layer.proxies.dtype == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")
    reference = losses.CCPLoss(losses.ContrastiveLoss(), 4, 5, proxies_per_class=2)
    reference.assign_proxies(layer.proxies_by_class())
    assert float(value) == pytest.approx(
        float(reference(y, x.astype(np.float16).astype(np.float32))), rel=1e-4)


class _ComposedContrastive(losses.ContrastiveLoss):
    """Same C2, but a subclass: CCPLoss composes it from ``compute`` instead of the fused path."""


def _active_proxy_negatives(layer, x, y):
    """Sample-vs-proxy negative pairs inside the margin, counted in float64 (independent)."""
    w = lip(np.asarray(layer.proxies, np.float64))
    d = np.sqrt(((lip(np.asarray(x, np.float64))[:, None] - w[None]) ** 2).sum(-1))
    negative = (np.asarray(y)[:, None] != np.asarray(layer.proxy_labels)[None]) & (
        np.asarray(y)[:, None] >= 0)
    return int(((d < layer.base_loss.neg_margin) & negative).sum())


@pytest.mark.slow  # two XLA compilations per case (~5-20 s each): make test, not test-fast
@pytest.mark.parametrize("term,neg_margin,jit", [
    ("loss", 0.9, False), ("pair", 0.9, False), ("proxy", 0.9, False),
    ("loss", 0.05, False), ("proxy", 0.05, False), ("loss", 0.9, True), ("loss", 0.05, True)])
def test_fused_c2_ccp_equals_the_composed_loss(term, neg_margin, jit):
    """The fused path (sparse positives, dense negatives only when one is active) against the
    loss composed from ``ContrastiveLoss.compute``, in both branches, also compiled by XLA."""
    rng = np.random.default_rng(23)
    x, y = batch(6, 4, 16, seed=24, scale=3.0)
    x[5] = x[4]  # a duplicate pair: distance 0, the NaN-free gradient
    x[7] = 0.0   # a zero embedding
    y = y.copy()
    y[-1] = -1   # a padding row
    proxies = rng.normal(size=(10 * 3, 16)) * np.repeat([0.1, 0.5], 15)[:, None]
    proxies[3] = 0.0  # a zero proxy
    results = []
    # (pos_margin 0 would make the duplicate pair's rounding, ~1e-4 or exactly 0 depending
    # on the normalization's op order, decide whether it counts: a float-level tie.)
    pos_margin = 0.05
    for base in (losses.ContrastiveLoss(pos_margin, neg_margin),
                 _ComposedContrastive(pos_margin, neg_margin)):
        layer = losses.CCPLoss(base, 10, 16, proxies_per_class=3, pair_weight=0.3,
                               proxy_weight=0.7)
        layer.assign_proxies(proxies.astype(np.float32))
        xt = tf.constant(x)

        @tf.function(jit_compile=jit)
        def terms_and_grads():
            with tf.GradientTape() as tape:
                tape.watch(xt)
                terms = layer.loss_terms(y, xt)
            return terms, tape.gradient(terms[term], [xt, layer.proxies])

        terms, grads = terms_and_grads()
        grads = [np.zeros(v.shape, np.float32) if g is None else np.asarray(g)
                 for g, v in zip(grads, (xt, layer.proxies))]  # "pair" does not reach proxies
        results.append([float(terms[k]) for k in ("loss", "pair", "proxy")] + grads)
    assert (_active_proxy_negatives(layer, x, y) > 0) == (neg_margin > 0.5)
    fused, composed = results
    np.testing.assert_allclose(fused[:3], composed[:3], rtol=1e-6)
    assert fused[0] > 0 and fused[2] > 0 and (fused[1] > 0 or neg_margin < 0.5)
    for a, b in zip(fused[3:], composed[3:]):
        assert np.all(np.isfinite(a))
        # Reassociated float32 sums: equal to ~1e-6 of the gradient's scale.
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=2e-5 * np.abs(b).max())
