"""The reference framework's other losses, pair miners and composition switches (issue 15) vs
independent float64 numpy references written with explicit loops from the papers / SPEC §4b;
gradients vs central finite differences of those references.

Mining decides which pairs count and carries no gradient, so a finite-difference reference
freezes the mined pairs at the base point (a step of 1e-5 does not change them here).
"""
import numpy as np
import pytest
import tensorflow as tf

from ccp import defaults, losses
from ccp.losses import miners
from tests.ccp.loss_testing import (assert_config_round_trip, batch, lip, np_hard_negatives,
                                    numeric_grad, value_and_grads)


# ----------------------------------------------------------------------------- helpers
def pairs(y, ry=None):
    """(i, j, same label?) for every pair anchor i forms (no self pair within one set)."""
    ref = y if ry is None else ry
    for i in range(len(y)):
        for j in range(len(ref)):
            if ry is None and i == j:
                continue
            yield i, j, y[i] == ref[j]


def dist(a, b, squared=False):
    d2 = float(np.sum((a - b) ** 2))
    return d2 if squared else np.sqrt(d2)


def masks_of(y, ry, n, m):
    pos, neg = np.zeros((n, m), bool), np.zeros((n, m), bool)
    for i, j, same in pairs(y, ry):
        (pos if same else neg)[i, j] = True
    return pos, neg


# ----------------------------------------------------------------------------- references
def ref_c2(x, y, r=None, ry=None, pm=0.0, nm=0.5, keep=None, all_terms=False, squared=False):
    """C2 (SPEC §4); keep = (pos, neg) bool masks of the pairs that count (mining)."""
    r = x if r is None else r
    pos_terms, neg_terms = [], []
    for i, j, same in pairs(y, ry):
        if keep is not None and not (keep[0] if same else keep[1])[i, j]:
            continue
        d = dist(x[i], r[j], squared)
        term = d - pm if same else nm - d
        if term > 0:
            (pos_terms if same else neg_terms).append(term)
    if all_terms:
        size = len(x) * len(r)
        return sum(pos_terms) / size + sum(neg_terms) / size
    return (sum(pos_terms) / (len(pos_terms) + 1e-16)
            + sum(neg_terms) / (len(neg_terms) + 1e-16))


def ref_triplet(x, y, margin, keep=None, all_terms=False):
    terms = []
    for a in range(len(x)):
        for p in range(len(x)):
            for n in range(len(x)):
                if a == p or y[a] != y[p] or y[a] == y[n]:
                    continue
                if keep is not None and not (keep[0][a, p] and keep[1][a, n]):
                    continue
                t = dist(x[a], x[p]) - dist(x[a], x[n]) + margin
                if t > 0:
                    terms.append(t)
    if all_terms:
        return sum(terms) / len(x) ** 3
    return sum(terms) / (len(terms) + 1e-16)


def ref_margin_all_terms(x, y, margin, beta):
    total = 0.0
    for i, j, same in pairs(y):
        d = dist(x[i], x[j])
        total += max(d - beta + margin, 0.0) if same else max(beta - d + margin, 0.0)
    return total / len(x) ** 2


def ref_ms(x, y, r=None, ry=None, alpha=2.0, beta=40.0, base=0.5, keep=None):
    r = x if r is None else r
    total = 0.0
    for i in range(len(x)):
        pos_sum = neg_sum = 0.0
        for j_i, j, same in pairs(y, ry):
            if j_i != i or (keep is not None and not (keep[0] if same else keep[1])[i, j]):
                continue
            s = float(x[i] @ r[j])
            if same:
                pos_sum += np.exp(-alpha * (s - base))
            else:
                neg_sum += np.exp(beta * (s - base))
        total += np.log1p(pos_sum) / alpha + np.log1p(neg_sum) / beta
    return total / len(x)


def np_ms_mining(s, pos, neg, eps):
    keep_pos, keep_neg = np.zeros_like(pos), np.zeros_like(neg)
    for i in range(s.shape[0]):
        min_pos = min([s[i, j] for j in range(s.shape[1]) if pos[i, j]], default=np.inf)
        max_neg = max([s[i, j] for j in range(s.shape[1]) if neg[i, j]], default=-np.inf)
        for j in range(s.shape[1]):
            keep_neg[i, j] = neg[i, j] and s[i, j] + eps > min_pos
            keep_pos[i, j] = pos[i, j] and s[i, j] - eps < max_neg
    return keep_pos, keep_neg


def np_distance_matrix(a, b=None):
    b = a if b is None else b
    return np.array([[dist(u, v) for v in b] for u in a])


def ref_nca(x, y, w, wy, temperature):
    total = 0.0
    for i in range(len(x)):
        logits = np.array([x[i] @ w[p] for p in range(len(w))]) / temperature
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        total += -np.log(1e-16 + sum(probs[p] for p in range(len(w)) if wy[p] == y[i]))
    return total / len(x)


def ref_anchor(x, y, w, wy, delta, alpha):
    pos_total = neg_total = 0.0
    pos_count = neg_count = 0
    for p in range(len(w)):
        pos = [x[i] @ w[p] for i in range(len(x)) if y[i] == wy[p]]
        neg = [x[i] @ w[p] for i in range(len(x)) if y[i] != wy[p]]
        if pos:
            pos_total += np.log1p(sum(np.exp(-alpha * (s - delta)) for s in pos))
            pos_count += 1
        if neg:
            neg_total += np.log1p(sum(np.exp(alpha * (s + delta)) for s in neg))
            neg_count += 1
    return pos_total / max(pos_count, 1) + neg_total / max(neg_count, 1)


def ref_normalized_softmax(x, y, w, wy, temperature):
    total = 0.0
    for i in range(len(x)):
        e = [np.exp(x[i] @ w[p] / temperature) for p in range(len(w))]
        own = sum(e[p] for p in range(len(w)) if wy[p] == y[i])
        total += -np.log(own / sum(e))
    return total / len(x)


def ref_virtual_softmax(x, y, w, wy, temperature, margin):
    total = 0.0
    for i in range(len(x)):
        logits = [(x[i] @ w[p] - (margin if wy[p] == y[i] else 0.0)) / temperature
                  for p in range(len(w))]
        logits.append(x[i] @ x[i] / temperature)  # the virtual class, never a positive
        e = np.exp(np.array(logits) - max(logits))
        own = sum(e[p] for p in range(len(w)) if wy[p] == y[i]) / e.sum()
        total += -np.log(1e-16 + own)
    return total / len(x)


def ref_proxy_synthesis(raw_x, y, raw_w, wy, per_class, num_classes, lam, mu, base, period=None):
    """Proxy Synthesis (SPEC §4b) with explicit loops; base(x, y, w, wy) a reference above."""
    x, w = lip(raw_x), lip(raw_w)
    b = len(x)
    count = min(int(round(b * mu)), b)
    fake_x, fake_w, pseudo = [], [], []
    for i in range(count):
        prev = (i - 1) % b
        fake_x.append(lam * x[i] + (1 - lam) * x[prev])
        fake_w.append(lam * w[y[i] * per_class] + (1 - lam) * w[y[prev] * per_class])
        pseudo.append(num_classes + (i if period is None else i % period))
    all_x = np.concatenate([x, lip(np.array(fake_x))]) if count else x
    all_w = np.concatenate([w, lip(np.array(fake_w))]) if count else w
    return base(all_x, np.concatenate([y, pseudo]).astype(int), all_w,
                np.concatenate([wy, pseudo]).astype(int))


# ----------------------------------------------------------------------------- proxy softmax losses
@pytest.mark.parametrize("kind", ["normalized", "virtual"])
def test_softmax_losses_values_and_gradients(kind):
    x, y = batch(3, 3, 4, seed=1)
    if kind == "normalized":
        layer = losses.NormalizedSoftmaxLoss(4, 4, temperature=0.3)
        per_class = 1

        def reference(v, p):
            return ref_normalized_softmax(lip(v), y, lip(p), np.arange(4), 0.3)
    else:
        layer = losses.VirtualSoftmaxLoss(4, 4, temperature=0.3, margin=0.2, proxies_per_class=2)
        per_class = 2

        def reference(v, p):
            return ref_virtual_softmax(lip(v), y, lip(p), np.repeat(np.arange(4), 2), 0.3, 0.2)
    layer.assign_proxies(np.random.default_rng(2).normal(size=(4, per_class, 4)) * 0.8)
    w = np.asarray(layer.proxies, np.float64)
    np.testing.assert_array_equal(layer.proxy_labels, np.repeat(np.arange(4), per_class))
    value, (gx, gw) = value_and_grads(lambda v: layer(y, v), x, [layer.proxies])
    assert value == pytest.approx(reference(x, w), rel=1e-5)
    np.testing.assert_allclose(gx, numeric_grad(lambda v: reference(v, w), x), rtol=2e-3,
                               atol=2e-5)
    np.testing.assert_allclose(gw, numeric_grad(lambda p: reference(x, p), w), rtol=2e-3,
                               atol=2e-5)


def test_softmax_defaults_are_the_references():
    assert losses.NormalizedSoftmaxLoss(2, 3).temperature == 0.11
    vs = losses.VirtualSoftmaxLoss(2, 3)
    assert (vs.temperature, vs.margin, vs.proxies_per_class) == (0.11, 0.0, 1)
    assert defaults.NORMALIZED_SOFTMAX_TEMPERATURE == defaults.VIRTUAL_SOFTMAX_TEMPERATURE == 0.11


# ----------------------------------------------------------------------------- proxy synthesis
PS_BASES = {
    "nca": (lambda: losses.ProxyNCALoss(4, 4, temperature=0.2),
            lambda b: (lambda x, y, w, wy: ref_nca(x, y, w, wy, 0.2)), 1),
    "anchor": (lambda: losses.ProxyAnchorLoss(4, 4, margin=0.1, alpha=8.0),
               lambda b: (lambda x, y, w, wy: ref_anchor(x, y, w, wy, 0.1, 8.0)), 1),
    "virtual": (lambda: losses.VirtualSoftmaxLoss(4, 4, 0.3, 0.1, proxies_per_class=2),
                lambda b: (lambda x, y, w, wy: ref_virtual_softmax(x, y, w, wy, 0.3, 0.1)), 2),
}


@pytest.mark.parametrize("name,mu,period", [("nca", 1.0, None), ("anchor", 0.5, None),
                                            ("nca", 0.75, 2), ("virtual", 1.0, None)])
def test_proxy_synthesis_values_and_gradients(name, mu, period):
    make, reference_of, per_class = PS_BASES[name]
    base = make()
    base.assign_proxies(np.random.default_rng(3).normal(size=(4, per_class, 4)))
    layer = losses.ProxySynthesisLoss(base, alpha=0.4, mu=mu, classes_per_batch=period)
    x, y = batch(3, 2, 4, seed=4)
    y = y[[0, 2, 4, 1, 3, 5]]  # mixed order: consecutive samples of different classes
    w, wy = np.asarray(layer.proxies, np.float64), np.repeat(np.arange(4), per_class)
    np.testing.assert_array_equal(layer.proxy_labels, wy)

    def reference(v, p):
        return ref_proxy_synthesis(v, y, p, wy, per_class, 4, 0.3, mu, reference_of(base), period)

    value, (gx, gw) = value_and_grads(lambda v: layer(y, v, mix_rate=0.3), x, [base.proxies])
    assert value == pytest.approx(reference(x, w), rel=1e-5)
    np.testing.assert_allclose(gx, numeric_grad(lambda v: reference(v, w), x), rtol=3e-3,
                               atol=3e-5)
    np.testing.assert_allclose(gw, numeric_grad(lambda p: reference(x, p), w), rtol=3e-3,
                               atol=3e-5)
    assert int(layer.draw_counter.numpy()) == 0  # a given mix rate draws nothing


def test_proxy_synthesis_draws_are_beta_seeded_and_checkpointed(tmp_path):
    base = losses.ProxyNCALoss(3, 4)
    layer = losses.ProxySynthesisLoss(base, alpha=0.4, seed=7)
    x, y = batch(3, 2, 4, seed=5)
    terms = layer.loss_terms(y, x)
    lam = float(terms["mix_rate"])
    assert 0.0 <= lam <= 1.0
    # The drawn lambda is the one the loss used: replaying it gives the same value.
    assert float(terms["loss"]) == pytest.approx(float(layer(y, x, mix_rate=lam)), rel=1e-6)
    twin = losses.ProxySynthesisLoss(losses.ProxyNCALoss(3, 4), alpha=0.4, seed=7)
    twin.draw_counter.assign(1)
    assert float(twin.draw_mix_rate()) == float(layer.draw_mix_rate())
    checkpoint = tf.train.Checkpoint(loss=layer)
    path = checkpoint.save(str(tmp_path / "ps"))
    upcoming = [float(layer.draw_mix_rate()) for _ in range(3)]
    checkpoint.restore(path).assert_consumed()
    assert [float(layer.draw_mix_rate()) for _ in range(3)] == upcoming
    # Beta(0.4, 0.4): mean 1/2, variance 1 / (4 (2 alpha + 1)) = 0.1389.
    draw = tf.function(layer.draw_mix_rate)
    draws = np.array([float(draw()) for _ in range(1000)])
    assert draws.mean() == pytest.approx(0.5, abs=0.05)
    assert draws.var() == pytest.approx(1.0 / (4 * 1.8), abs=0.02)


def test_proxy_synthesis_rejects_bad_bases_and_arguments():
    with pytest.raises(TypeError, match="ProxySynthesisLoss wraps"):
        losses.ProxySynthesisLoss(losses.ContrastiveLoss())
    with pytest.raises(ValueError, match="mu must be in"):
        losses.ProxySynthesisLoss(losses.ProxyNCALoss(2, 3), mu=1.5)


# ----------------------------------------------------------------------------- MDR
def ref_mdr(raw, y, levels, stats, weight=1.0, penalty=0.01, momentum=0.9, nm=1.2):
    """MDR (SPEC §4b) around C2 (0, nm) on E / mu; stats = (M, S) before the call or None.

    Returns (value, (M, S) after the call). The statistics carry no gradient: the caller
    freezes them for finite differences by passing frozen=... below.
    """
    e = np.asarray(raw, np.float64)
    d = np_distance_matrix(e)
    mu, sigma = d.mean(), d.std()
    if stats is None:
        m, s = mu, sigma
    else:
        m = (1 - momentum) * mu + momentum * stats[0]
        s = (1 - momentum) * sigma + momentum * stats[1]
    reg = np.mean([[min(abs((d[i, j] - m) / s - lv) for lv in levels) for j in range(len(e))]
                   for i in range(len(e))])
    base = ref_c2(e / mu, y, nm=nm)
    return base + weight * reg + penalty * float(np.sum(np.square(levels))), (m, s)


def ref_mdr_frozen(raw, y, levels, m, s, nm=1.2):
    e = np.asarray(raw, np.float64)
    d = np_distance_matrix(e)
    reg = np.mean([[min(abs((d[i, j] - m) / s - lv) for lv in levels) for j in range(len(e))]
                   for i in range(len(e))])
    return ref_c2(e / d.mean(), y, nm=nm) + reg + 0.01 * float(np.sum(np.square(levels)))


def test_mdr_values_running_statistics_and_gradients(tmp_path):
    layer = losses.MultiLevelDistanceRegularization(losses.ContrastiveLoss(0.0, 1.2))
    levels = np.array([-3.0, 0.0, 3.0])
    stats = None
    for seed in (6, 7, 8):
        x, y = batch(3, 2, 4, seed=seed, scale=3.0)
        expected, new_stats = ref_mdr(x, y, levels, stats)
        if seed == 8:
            value, (gx, gl) = value_and_grads(lambda v: layer(y, v), x, [layer.levels])
        else:
            value = float(layer(y, x))
        assert value == pytest.approx(expected, rel=1e-5)
        assert float(layer.running_mean.numpy()) == pytest.approx(new_stats[0], rel=1e-5)
        assert float(layer.running_std.numpy()) == pytest.approx(new_stats[1], rel=1e-5)
        if seed == 8:
            m, s = new_stats
            np.testing.assert_allclose(
                gx, numeric_grad(lambda v: ref_mdr_frozen(v, y, levels, m, s), x),
                rtol=3e-3, atol=3e-5)
            np.testing.assert_allclose(
                gl, numeric_grad(lambda lv: ref_mdr_frozen(x, y, lv, m, s), levels),
                rtol=3e-3, atol=3e-5)
        stats = new_stats
    # Evaluation (training=False) reads the statistics without moving them.
    before = float(layer.running_mean.numpy())
    layer.loss_terms(y, x * 2.0, training=False)
    assert float(layer.running_mean.numpy()) == before
    # Statistics and levels are weights: non-trainable / trainable, and they checkpoint.
    assert {v.name for v in layer.non_trainable_weights} >= {"running_mean", "running_std",
                                                             "initialized"}
    assert [v.name for v in layer.trainable_weights] == ["levels"]
    checkpoint = tf.train.Checkpoint(loss=layer)
    path = checkpoint.save(str(tmp_path / "mdr"))
    layer(y, x * 3.0)
    checkpoint.restore(path).assert_consumed()
    assert float(layer.running_mean.numpy()) == before


def test_mdr_around_a_proxy_loss_normalizes_through_the_base():
    base = losses.ProxyNCALoss(3, 4, temperature=0.2)
    layer = losses.MultiLevelDistanceRegularization(base, weight=0.5, level_penalty=0.0)
    x, y = batch(3, 2, 4, seed=9, scale=3.0)
    e = np.asarray(x, np.float64)
    d = np_distance_matrix(e)
    reg = np.mean([[min(abs((d[i, j] - d.mean()) / d.std() - lv) for lv in (-3, 0, 3))
                    for j in range(len(e))] for i in range(len(e))])
    w = lip(np.asarray(base.proxies))
    expected = ref_nca(lip(e / d.mean()), y, w, np.arange(3), 0.2) + 0.5 * reg
    assert float(layer(y, x)) == pytest.approx(expected, rel=1e-5)
    assert layer.proxies is base.proxies and layer.proxy_variables == [base.proxies]


# ----------------------------------------------------------------------------- weighted loss
def test_weighted_loss_values_gradients_and_inside_ccp():
    c2, ms = losses.ContrastiveLoss(0.0, 0.8), losses.MultiSimilarityLoss(2.0, 10.0, 0.5)
    layer = losses.WeightedLoss([c2, ms], [0.7, 0.2])
    x, y = batch(3, 3, 4, seed=10)

    def reference(v, r=None, ry=None):
        v = lip(v)
        return 0.7 * ref_c2(v, y, r, ry, nm=0.8) + 0.2 * ref_ms(v, y, r, ry, 2.0, 10.0, 0.5)

    value, (gx,) = value_and_grads(lambda v: layer(y, v), x)
    assert value == pytest.approx(reference(x), rel=1e-5)
    np.testing.assert_allclose(gx, numeric_grad(reference, x), rtol=3e-3, atol=3e-5)
    ccp = losses.CCPLoss(layer, 3, 4, proxies_per_class=2)
    ccp.assign_proxies(np.random.default_rng(11).normal(size=(3, 2, 4)))
    w, wy = lip(np.asarray(ccp.proxies)), np.repeat(np.arange(3), 2)
    assert float(ccp(y, x)) == pytest.approx(0.1 * reference(x) + reference(x, w, wy), rel=1e-5)
    # A single loss and weight; a proxy member forwards the proxy interface.
    nca = losses.ProxyNCALoss(3, 4)
    single = losses.WeightedLoss(nca, 2.0)
    assert float(single(y, x)) == pytest.approx(2.0 * float(nca(y, x)), rel=1e-6)
    assert single.proxies is nca.proxies
    with pytest.raises(TypeError, match="pair losses only"):
        losses.CCPLoss(losses.WeightedLoss([c2, nca], [1.0, 1.0]), 3, 4)(y, x)
    with pytest.raises(ValueError, match="one weight per loss"):
        losses.WeightedLoss([c2, ms], [1.0])


# ----------------------------------------------------------------------------- miners
def test_hard_negative_and_multi_similarity_mining_match_numpy():
    rng = np.random.default_rng(12)
    d = rng.uniform(0, 2, size=(7, 9))
    y, ry = np.array([0, 0, 1, 1, 1, 2, 3]), rng.integers(0, 4, size=9)
    pos, neg = masks_of(y, ry, 7, 9)
    got = miners.hard_negatives(tf.constant(d), tf.constant(pos), tf.constant(neg))
    for g, e in zip(got, (pos, np_hard_negatives(d, pos, neg))):
        np.testing.assert_array_equal(g.numpy(), e)
    s = rng.uniform(-1, 1, size=(7, 9))
    got = miners.multi_similarity(tf.constant(s), tf.constant(pos), tf.constant(neg), 0.1)
    for g, e in zip(got, np_ms_mining(s, pos, neg, 0.1)):
        np.testing.assert_array_equal(g.numpy(), e)


def test_distance_weighted_sampling_follows_the_paper():
    rng = np.random.default_rng(13)
    n, m, dim = 6, 40, 16
    d = rng.uniform(0.2, 1.9, size=(n, m))
    y, ry = np.array([0, 0, 1, 1, 2, 2]), rng.integers(0, 5, size=m)
    pos, neg = masks_of(y, ry, n, m)
    # Log weights: (2 - D) log d - (D - 3)/2 log(1 - d^2/4), d clamped at 0.5, 0 beyond 1.4.
    log_w = miners.distance_weighted_log_weights(tf.constant(d), tf.constant(neg), float(dim))
    for i in range(n):
        for j in range(m):
            c = max(d[i, j], 0.5)
            if neg[i, j] and c < 1.4:
                expected = (2 - dim) * np.log(c) - (dim - 3) / 2 * np.log(1 - c * c / 4)
                assert log_w[i, j].numpy() == pytest.approx(expected, rel=1e-9)
            else:
                assert log_w[i, j].numpy() == -np.inf
    drawn = [miners.distance_weighted(tf.constant(d), tf.constant(pos), tf.constant(neg), dim,
                                      tf.constant([s, 0], tf.int64))[1].numpy()
             for s in range(30)]
    for sample in drawn:
        assert not np.any(sample & ~(neg & (d < 1.4)))  # only eligible negatives
        counts = sample.sum(axis=1)
        assert np.all(counts <= pos.sum(axis=1)) and np.all(counts[pos.sum(axis=1) > 0] >= 1)
    assert not all(np.array_equal(drawn[0], other) for other in drawn[1:])
    again = miners.distance_weighted(tf.constant(d), tf.constant(pos), tf.constant(neg), dim,
                                     tf.constant([0, 0], tf.int64))[1].numpy()
    np.testing.assert_array_equal(again, drawn[0])
    # The most probable negative of a row is drawn far more often than the least probable one.
    row = np.where(neg[0] & (d[0] < 1.4))[0]
    best, worst = row[np.argmax(log_w.numpy()[0, row])], row[np.argmin(log_w.numpy()[0, row])]
    hits = np.sum([sample[0] for sample in drawn], axis=0)
    assert hits[best] > hits[worst]


@pytest.mark.parametrize("miner", ["hard_negatives", "multi_similarity"])
@pytest.mark.parametrize("loss", ["c2", "triplet", "ms"])
def test_pair_losses_with_a_miner_values_and_gradients(miner, loss):
    x, y = batch(3, 3, 4, seed=14)
    make, reference = {
        "c2": (lambda m: losses.ContrastiveLoss(0.1, 0.9, miner=m),
               lambda v, keep: ref_c2(v, y, pm=0.1, nm=0.9, keep=keep)),
        "triplet": (lambda m: losses.TripletLoss(0.3, miner=m),
                    lambda v, keep: ref_triplet(v, y, 0.3, keep=keep)),
        "ms": (lambda m: losses.MultiSimilarityLoss(2.0, 10.0, 0.5, miner=m),
               lambda v, keep: ref_ms(v, y, alpha=2.0, beta=10.0, base=0.5, keep=keep)),
    }[loss]
    layer = make(miner)
    v0 = lip(x)
    pos, neg = masks_of(y, None, len(y), len(y))
    if miner == "hard_negatives":  # ranked by the loss's own pdist: -x.y for MS (SPEC §4c)
        pdist = -(v0 @ v0.T) if loss == "ms" else np_distance_matrix(v0)
        keep = pos, np_hard_negatives(pdist, pos, neg)
    else:
        keep = np_ms_mining(v0 @ v0.T, pos, neg, 0.1)
    value, (gx,) = value_and_grads(lambda v: layer(y, v), x)
    assert value == pytest.approx(reference(v0, keep), rel=1e-5)
    np.testing.assert_allclose(gx, numeric_grad(lambda v: reference(lip(v), keep), x),
                               rtol=3e-3, atol=3e-5)


def test_ms_miner_is_the_ms_mining_option():
    x, y = batch(4, 3, 5, seed=15)
    mined = losses.MultiSimilarityLoss(miner="multi_similarity")
    assert float(mined(y, x)) == pytest.approx(
        float(losses.MultiSimilarityLoss(mining=True)(y, x)), rel=1e-6)


def test_miner_inside_ccp_mines_both_terms_and_leaves_the_fused_path():
    layer = losses.CCPLoss(losses.ContrastiveLoss(0.0, 0.9, miner="hard_negatives"), 3, 4,
                           proxies_per_class=2)
    layer.assign_proxies(np.random.default_rng(16).normal(size=(3, 2, 4)))
    x, y = batch(3, 3, 4, seed=17)
    w, wy = lip(np.asarray(layer.proxies)), np.repeat(np.arange(3), 2)

    def reference(raw, p):
        v = lip(raw)
        pos, neg = masks_of(y, None, len(y), len(y))
        keep = pos, np_hard_negatives(np_distance_matrix(lip(x)), pos, neg)
        ppos, pneg = masks_of(y, wy, len(y), len(wy))
        pkeep = ppos, np_hard_negatives(np_distance_matrix(lip(x), w), ppos, pneg)
        return (0.1 * ref_c2(v, y, nm=0.9, keep=keep)
                + ref_c2(v, y, lip(p), wy, nm=0.9, keep=pkeep))

    raw_w = np.asarray(layer.proxies, np.float64)
    value, (gx, gw) = value_and_grads(lambda v: layer(y, v), x, [layer.proxies])
    assert value == pytest.approx(reference(x, raw_w), rel=1e-5)
    # Mining matters on this batch (the fused path, which has no miner, would give this):
    unmined = 0.1 * ref_c2(lip(x), y, nm=0.9) + ref_c2(lip(x), y, w, wy, nm=0.9)
    assert value != pytest.approx(unmined, rel=1e-4)  # 8e-4 apart; the value is within 1e-5
    np.testing.assert_allclose(gx, numeric_grad(lambda v: reference(v, raw_w), x), rtol=3e-3,
                               atol=3e-5)
    np.testing.assert_allclose(gw, numeric_grad(lambda p: reference(x, p), raw_w), rtol=3e-3,
                               atol=3e-5)


def test_distance_weighted_miner_in_a_loss_is_seeded_and_checkpointed(tmp_path):
    x, y = batch(4, 3, 6, seed=18)
    first, second = (losses.MarginLoss(miner=miners.DistanceWeighted(seed=3)) for _ in range(2))
    assert [float(first(y, x)) for _ in range(3)] == [float(second(y, x)) for _ in range(3)]
    checkpoint = tf.train.Checkpoint(loss=first)
    path = checkpoint.save(str(tmp_path / "dw"))
    upcoming = [float(first(y, x)) for _ in range(3)]
    checkpoint.restore(path).assert_consumed()
    assert [float(first(y, x)) for _ in range(3)] == upcoming
    xbm = losses.CrossBatchMemory(losses.ContrastiveLoss(miner="distance_weighted"), 6, 24)
    assert np.isfinite(float(xbm.loss_terms(y, x, training=True)["loss"]))


@pytest.mark.slow
def test_seeded_draws_are_replica_consistent_under_mirrored_strategy():
    x, y = batch(3, 2, 4, seed=23)
    makers = [lambda: losses.ProxySynthesisLoss(losses.ProxyNCALoss(3, 4, seed=1), seed=4),
              lambda: losses.TripletLoss(0.2, miner=miners.DistanceWeighted(seed=5))]
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    for make in makers:
        eager = make()
        expected = [float(eager(y, x)) for _ in range(2)]
        with strategy.scope():
            mirrored = make()
        for weight, source in zip(mirrored.weights, eager.weights):
            if weight.trainable:
                weight.assign(source)
        step = tf.function(lambda a, b: mirrored(a, b))
        for value in expected:
            replicas = strategy.experimental_local_results(strategy.run(step, args=(y, x)))
            assert [float(r) for r in replicas] == pytest.approx([value, value], rel=1e-6)


def test_miner_and_switch_errors_are_clear():
    with pytest.raises(ValueError, match="miner must be None, one of"):
        losses.ContrastiveLoss(miner="hardest")
    class OwnMasks(losses.PairLoss):  # builds its masks without the pair_masks hook
        pass

    with pytest.raises(ValueError, match="OwnMasks does not take a miner"):
        OwnMasks(miner="hard_negatives")
    with pytest.raises(ValueError, match="average_nonzero_only=False has no meaning"):
        losses.MultiSimilarityLoss(average_nonzero_only=False)


# ----------------------------------------------------------------------------- composition switches
def test_average_over_all_terms_and_squared_distances():
    x, y = batch(3, 3, 4, seed=19)
    v = lip(x)
    cases = [
        (losses.ContrastiveLoss(0.1, 0.9, average_nonzero_only=False),
         lambda r: ref_c2(lip(r), y, pm=0.1, nm=0.9, all_terms=True)),
        (losses.TripletLoss(0.3, average_nonzero_only=False),
         lambda r: ref_triplet(lip(r), y, 0.3, all_terms=True)),
        (losses.MarginLoss(0.2, 1.0, average_nonzero_only=False),
         lambda r: ref_margin_all_terms(lip(r), y, 0.2, 1.0)),
        (losses.ContrastiveLoss(0.1, 0.7, distance=losses.SquaredEuclideanDistance()),
         lambda r: ref_c2(lip(r), y, pm=0.1, nm=0.7, squared=True)),
    ]
    for layer, reference in cases:
        value, (gx,) = value_and_grads(lambda r: layer(y, r), x)
        assert value == pytest.approx(reference(x), rel=1e-5)
        np.testing.assert_allclose(gx, numeric_grad(reference, x), rtol=3e-3, atol=3e-5)
    # Inside CCP the switch applies to both terms (and the fused C2 path steps aside).
    ccp = losses.CCPLoss(losses.ContrastiveLoss(0.1, 0.9, average_nonzero_only=False), 3, 4,
                         proxies_per_class=2)
    w, wy = lip(np.asarray(ccp.proxies)), np.repeat(np.arange(3), 2)
    expected = (0.1 * ref_c2(v, y, pm=0.1, nm=0.9, all_terms=True)
                + ref_c2(v, y, w, wy, pm=0.1, nm=0.9, all_terms=True))
    assert float(ccp(y, x)) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("intra", [False, True])
def test_proxy_pair_loss_single_proxy_variant_and_intra_proxy_pairs(intra):
    layer = losses.ProxyPairLoss(losses.ContrastiveLoss(0.1, 0.9), 3, 4, intra_proxy_pairs=intra)
    layer.assign_proxies(np.random.default_rng(20).normal(size=(3, 1, 4)))
    x, y = batch(3, 2, 4, seed=21)
    wy = np.arange(3)

    def reference(raw, p):
        v, w = lip(raw), lip(p)
        queries, labels = (np.concatenate([w, v]), np.concatenate([wy, y])) if intra else (v, y)
        return ref_c2(queries, labels, w, wy, pm=0.1, nm=0.9)

    raw_w = np.asarray(layer.proxies, np.float64)
    value, (gx, gw) = value_and_grads(lambda v: layer(y, v), x, [layer.proxies])
    assert value == pytest.approx(reference(x, raw_w), rel=1e-5)
    np.testing.assert_allclose(gx, numeric_grad(lambda v: reference(v, raw_w), x), rtol=3e-3,
                               atol=3e-5)
    np.testing.assert_allclose(gw, numeric_grad(lambda p: reference(x, p), raw_w), rtol=3e-3,
                               atol=3e-5)


# ----------------------------------------------------------------------------- configs
CONFIG_CASES = [
    lambda: losses.NormalizedSoftmaxLoss(4, 5, temperature=0.2),
    lambda: losses.VirtualSoftmaxLoss(4, 5, 0.2, 0.1, proxies_per_class=2),
    lambda: losses.ProxySynthesisLoss(losses.ProxyAnchorLoss(4, 5), 0.5, 0.5,
                                      classes_per_batch=2, seed=3),
    lambda: losses.MultiLevelDistanceRegularization(losses.TripletLoss(0.2), 0.5, 0.02, 0.8,
                                                    (-2.0, 0.0, 2.0)),
    lambda: losses.WeightedLoss([losses.ContrastiveLoss(), losses.ProxyNCALoss(4, 5)],
                                [1.0, 0.5]),
    lambda: losses.ContrastiveLoss(miner=miners.DistanceWeighted(0.4, 1.3, seed=2),
                                   average_nonzero_only=False),
    lambda: losses.TripletLoss(miner="hard_negatives", distance=losses.SquaredEuclideanDistance()),
    lambda: losses.CCPLoss(losses.MultiSimilarityLoss(miner=miners.MultiSimilarity(0.2)), 4, 5,
                           proxies_per_class=2),
    lambda: losses.ProxyPairLoss(losses.MultiSimilarityLoss(), 4, 5, intra_proxy_pairs=True),
]


@pytest.mark.parametrize("make", CONFIG_CASES)
def test_get_config_round_trip(make):
    layer = make()
    kwargs = {"mix_rate": 0.4} if isinstance(layer, losses.ProxySynthesisLoss) else {}
    assert_config_round_trip(layer, seed=22, **kwargs)
