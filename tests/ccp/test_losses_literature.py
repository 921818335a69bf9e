"""Circle, FastAP, Ranked List, the SNR distance, rho-regularization and the spectral-decay
diagnostic (issue 17) vs independent float64 numpy references written from the papers with
explicit loops; gradients vs central finite differences of those references.

Where a paper holds weights constant in back-propagation (Circle's alpha_p/alpha_n, Ranked List's
pair weights) the reference for the finite differences freezes them at the base point.
An optional test compares with pytorch-metric-learning when torch and it are importable.
"""
import warnings

import numpy as np
import pytest
import tensorflow as tf

from ccp import defaults, losses, ops
from ccp.diagnostics import spectral_decay
from ccp.losses import distances, rho
from tests.ccp.loss_testing import (assert_config_round_trip, batch, lip, numeric_grad,
                                     tf_value_and_grads)


# ----------------------------------------------------------------------------- helpers
def partners(i, y, ry, keep=None):
    """(j, same label?) for every reference j anchor i forms a pair with (and ``keep`` keeps)."""
    same_set = ry is None
    ref = y if same_set else ry
    for j in range(len(ref)):
        if (same_set and i == j) or y[i] < 0 or ref[j] < 0:
            continue
        if keep is not None and (i, j) not in keep:
            continue
        yield j, y[i] == ref[j]


def euclid(a, b):
    return float(np.sqrt(np.sum((a - b) ** 2)))


def snr(a, b):
    """SNR distance of the paper: var(b - a) / var(a), a the anchor."""
    noise, signal = b - a, a
    return float(np.mean((noise - noise.mean()) ** 2) / np.mean((signal - signal.mean()) ** 2))


def zero_mean_reg(x, weight):
    return weight * np.mean([abs(np.sum(row)) for row in x])


def logsumexp(values):
    values = np.asarray(values, np.float64)
    top = values.max()
    return top + np.log(np.sum(np.exp(values - top)))


# ----------------------------------------------------------------------------- references
def ref_circle(x, y, r=None, ry=None, frozen=None, m=0.4, gamma=80.0, keep=None):
    """Circle loss (Sun et al. 2020, Eq. 4 with O_p = 1 + m, O_n = -m, D_p = 1 - m, D_n = m)."""
    r = x if r is None else r
    fx, fr = (x, r) if frozen is None else frozen
    total, count = 0.0, 0
    for i in range(len(x)):
        pos, neg = [], []
        for j, same in partners(i, y, ry, keep):
            s, s_frozen = float(x[i] @ r[j]), float(fx[i] @ fr[j])
            if same:
                pos.append(-gamma * max(1 + m - s_frozen, 0.0) * (s - (1 - m)))
            else:
                neg.append(gamma * max(s_frozen + m, 0.0) * (s - m))
        if pos and neg:
            total += np.logaddexp(0.0, logsumexp(pos) + logsumexp(neg))
            count += 1
    return total / max(count, 1)


def ref_fastap(x, y, r=None, ry=None, frozen=None, num_bins=10, keep=None):
    """FastAP (Cakir et al. 2019): triangular-kernel histograms over L + 1 centers in [0, 4]."""
    r = x if r is None else r
    centers = np.linspace(0.0, 4.0, num_bins + 1)
    delta = 4.0 / num_bins
    total, count = 0.0, 0
    for i in range(len(x)):
        h_pos, h_all, n_pos = np.zeros(num_bins + 1), np.zeros(num_bins + 1), 0
        for j, same in partners(i, y, ry, keep):
            d = float(np.sum((x[i] - r[j]) ** 2))
            kernel = np.maximum(0.0, 1.0 - np.abs(d - centers) / delta)
            h_all += kernel
            if same:
                h_pos += kernel
                n_pos += 1
        if n_pos == 0:
            continue
        cum_pos, cum_all = np.cumsum(h_pos), np.cumsum(h_all)
        ap = sum(h_pos[k] * cum_pos[k] / cum_all[k] for k in range(num_bins + 1) if cum_all[k] > 0)
        total += 1.0 - ap / n_pos
        count += 1
    return total / max(count, 1)


def ref_ranked_list(x, y, r=None, ry=None, frozen=None, alpha=1.2, m=0.4, t_n=10.0, t_p=0.0,
                    lam=1.0, dist=euclid, keep=None):
    """Ranked List loss (Wang et al. 2019): L_P + lambda L_N per anchor, mean over anchors."""
    r = x if r is None else r
    fx, fr = (x, r) if frozen is None else frozen
    total = 0.0
    for i in range(len(x)):
        pos, neg = [], []  # (violation, frozen weight)
        for j, same in partners(i, y, ry, keep):
            d, d_frozen = dist(x[i], r[j]), dist(fx[i], fr[j])
            if same and d_frozen > alpha - m:
                pos.append((d - (alpha - m), np.exp(t_p * (d_frozen - (alpha - m)))))
            if not same and d_frozen < alpha:
                neg.append((alpha - d, np.exp(t_n * (alpha - d_frozen))))
        for terms, weight in ((pos, 1.0), (neg, lam)):
            if terms:
                total += weight * sum(v * w for v, w in terms) / sum(w for _, w in terms)
    return total / len(x)


def ref_contrastive(x, y, r=None, ry=None, frozen=None, pos_margin=0.0, neg_margin=1.0,
                    dist=snr, reg=1e-3):
    r = x if r is None else r
    pos, neg = [], []
    for i in range(len(x)):
        for j, same in partners(i, y, ry):
            d = dist(x[i], r[j])
            term = d - pos_margin if same else neg_margin - d
            if term > 0:
                (pos if same else neg).append(term)
    return (sum(pos) / (len(pos) + 1e-16) + sum(neg) / (len(neg) + 1e-16)
            + zero_mean_reg(x, reg))


def ref_triplet(x, y, r=None, ry=None, frozen=None, margin=0.1, dist=euclid, reg=0.0,
                switched=None):
    """All triplets; a switched anchor's tuples are (a, a, p): relu(0 - d(a, p) + margin)."""
    r = x if r is None else r
    terms = []
    for a in range(len(x)):
        pairs = list(partners(a, y, ry))
        d = {j: dist(x[a], r[j]) for j, _ in pairs}
        positives = [j for j, same in pairs if same]
        negatives = [j for j, same in pairs if not same]
        if switched is not None and switched[a] and positives:
            terms += [margin - d[p] for p in positives]
        else:
            terms += [d[p] - d[n] + margin for p in positives for n in negatives]
    terms = [t for t in terms if t > 0]
    return sum(terms) / (len(terms) + 1e-16) + zero_mean_reg(x, reg)


def ref_margin(x, y, margin=0.2, beta=1.2, dist=euclid, reg=0.0, switched=None):
    """Margin loss (Wu et al.); a switched anchor scores its positives as negatives plus the
    self pair (distance 0) as a positive."""
    pos, neg = [], []
    for i in range(len(x)):
        pairs = list(partners(i, y, None))
        flip = switched is not None and switched[i] and any(same for _, same in pairs)
        for j, same in pairs:
            d = dist(x[i], x[j])
            if flip and not same:
                continue
            if same and not flip:
                pos.append(margin + d - beta)
            else:
                neg.append(margin + beta - d)
        if flip:
            pos.append(margin + 0.0 - beta)
    pos = [t for t in pos if t > 0]
    neg = [t for t in neg if t > 0]
    return sum(pos) / (len(pos) + 1e-16) + sum(neg) / (len(neg) + 1e-16) + zero_mean_reg(x, reg)


# name: (make layer (paper defaults), reference with the same parameters, freezes weights?)
NEW_CASES = {
    "circle": (lambda: losses.CircleLoss(), ref_circle),
    "circle_small_gamma": (lambda: losses.CircleLoss(margin=0.25, gamma=16.0),
                           lambda *a, **k: ref_circle(*a, **k, m=0.25, gamma=16.0)),
    "fastap": (lambda: losses.FastAPLoss(), ref_fastap),
    "fastap_5_bins": (lambda: losses.FastAPLoss(num_bins=5),
                      lambda *a, **k: ref_fastap(*a, **k, num_bins=5)),
    "ranked_list": (lambda: losses.RankedListLoss(), ref_ranked_list),
    "ranked_list_tp": (lambda: losses.RankedListLoss(1.0, 0.3, 5.0, 2.0, 0.5),
                       lambda *a, **k: ref_ranked_list(*a, **k, alpha=1.0, m=0.3, t_n=5.0,
                                                       t_p=2.0, lam=0.5)),
    "snr_contrastive": (lambda: losses.ContrastiveLoss(0.1, 1.0, distance="snr"),
                        lambda *a, **k: ref_contrastive(*a, **k, pos_margin=0.1)),
    "snr_triplet": (lambda: losses.TripletLoss(0.3, distance=losses.SNRDistance(0.01)),
                    lambda *a, **k: ref_triplet(*a, **k, margin=0.3, dist=snr, reg=0.01)),
    "snr_ranked_list": (lambda: losses.RankedListLoss(1.0, 0.4, distance="snr"),
                        lambda *a, **k: ref_ranked_list(*a, **k, alpha=1.0, dist=snr)
                        + zero_mean_reg(a[0], 1e-3)),
}
GRADIENT_CASES = ["circle_small_gamma", "fastap", "ranked_list", "ranked_list_tp",
                  "snr_contrastive", "snr_triplet"]


def frozen_reference(reference, y, x0, r0=None, ry=None):
    """f(v) with the paper's constant weights frozen at the base point (x0, r0)."""
    base = (lip(x0), lip(x0) if r0 is None else lip(r0))
    return lambda v, r=None: reference(lip(v), y, None if r is None else lip(r), ry,
                                       frozen=(base[0], base[1]))


# ----------------------------------------------------------------------------- values
@pytest.mark.parametrize("name", sorted(NEW_CASES))
def test_values_on_structured_and_random_batches(name):
    make, reference = NEW_CASES[name]
    layer = make()
    x, y = batch(5, 4, 6, seed=1)
    assert float(layer(y, x)) == pytest.approx(reference(lip(x), y), rel=1e-4, abs=1e-6)
    rng = np.random.default_rng(2)
    y_random = rng.integers(0, 5, size=16)
    x_random = rng.normal(size=(16, 5)).astype(np.float32)
    assert float(layer(y_random[:, None], x_random)) == pytest.approx(
        reference(lip(x_random), y_random), rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("name", GRADIENT_CASES)
def test_gradients_match_finite_differences(name):
    make, reference = NEW_CASES[name]
    x, y = batch(3, 3, 4, seed=3)
    _, (grad,) = tf_value_and_grads(make(), y, x)
    f = frozen_reference(reference, y, x)
    np.testing.assert_allclose(grad, numeric_grad(f, x), rtol=3e-3, atol=3e-4)


@pytest.mark.parametrize("name", ["circle", "fastap", "ranked_list", "snr_triplet"])
def test_single_class_and_padded_references_are_finite(name):
    make, reference = NEW_CASES[name]
    x, y = batch(1, 5, 4, seed=4)  # no negatives at all
    value, (grad,) = tf_value_and_grads(make(), y, x)
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    assert value == pytest.approx(reference(lip(x), y), rel=1e-4, abs=1e-6)
    # Reference rows with label -1 (an empty memory) form no pair.
    layer = make()
    xb, yb = batch(3, 2, 4, seed=5)
    refs = np.concatenate([lip(xb), np.zeros((3, 4))]).astype(np.float32)
    ref_labels = np.concatenate([yb, [-1, -1, -1]])
    got = float(layer.compute(tf.constant(lip(xb), tf.float32), yb, refs, ref_labels))
    assert got == pytest.approx(reference(lip(xb), yb, refs.astype(np.float64), ref_labels),
                                rel=1e-4, abs=1e-6)


def test_circle_is_stable_at_large_scale():
    # gamma = 256 (the face-recognition setting) on well-separated classes: log-sum-exp form.
    x, y = batch(4, 3, 8, seed=6, scale=4.0)
    layer = losses.CircleLoss(margin=0.25, gamma=256.0)
    value, (grad,) = tf_value_and_grads(layer, y, x)
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    assert value == pytest.approx(ref_circle(lip(x), y, m=0.25, gamma=256.0), rel=1e-4)


def test_fastap_is_one_minus_exact_ap_when_bins_separate_the_distances():
    # 5 bins: centers 0, 0.8, ..., 4. References at squared distances 0.8, 1.6, 2.4, 3.2 (one
    # per center) ranked negative, positive, positive, negative: AP = (1/2 + 2/3) / 2.
    angles = np.arccos(1 - np.array([0.8, 1.6, 2.4, 3.2]) / 2)  # |a - b|^2 = 2 - 2 cos
    refs = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    anchor = np.array([[1.0, 0.0]])
    value = float(losses.FastAPLoss(num_bins=5).compute(
        tf.constant(anchor, tf.float32), [0], tf.constant(refs, tf.float32), [1, 0, 0, 1]))
    assert value == pytest.approx(1 - (1 / 2 + 2 / 3) / 2, abs=1e-5)


def hard_negative_pairs(x, y, pdist=None):
    """The pairs a hard-negative miner keeps: every positive, and per anchor its k closest
    negatives by the loss's own ``pdist`` (ties kept), k the largest number of positives of
    any anchor. ``pdist``: Euclidean by default; ``-x.y`` for a cosine loss (SPEC §4c)."""
    pdist = euclid if pdist is None else pdist
    pairs = {i: list(partners(i, y, None)) for i in range(len(x))}
    k = max(1, max(sum(same for _, same in p) for p in pairs.values()))
    keep = set()
    for i, p in pairs.items():
        negatives = sorted(pdist(x[i], x[j]) for j, same in p if not same)
        kth = negatives[min(k, len(negatives)) - 1]
        keep |= {(i, j) for j, same in p if same or pdist(x[i], x[j]) <= kth}
    return keep


@pytest.mark.parametrize("name", ["circle", "fastap", "ranked_list"])
def test_new_losses_take_a_miner(name):
    make, reference = NEW_CASES[name]
    layer = type(make())(miner="hard_negatives")
    x, y = batch(3, 2, 4, seed=24)
    cosine = name == "circle"  # Circle's pdist is -x.y
    keep = hard_negative_pairs(lip(x), y, (lambda a, b: -float(a @ b)) if cosine else None)
    assert len(keep) < len(y) * (len(y) - 1)  # the miner drops pairs
    assert float(layer(y, x)) == pytest.approx(reference(lip(x), y, keep=keep), rel=1e-4)


# ----------------------------------------------------------------------------- SNR distance
def test_snr_distances_match_the_definition():
    rng = np.random.default_rng(7)
    a, b = rng.normal(size=(5, 6)), rng.normal(size=(4, 6))
    got = ops.snr_distances(tf.constant(a), tf.constant(b)).numpy()
    expected = np.array([[snr(a[i], b[j]) for j in range(4)] for i in range(5)])
    np.testing.assert_allclose(got, expected, rtol=1e-10)
    same = ops.snr_distances(tf.constant(a)).numpy()
    expected_same = np.array([[snr(a[i], a[j]) for j in range(5)] for i in range(5)])
    np.testing.assert_allclose(same, expected_same, rtol=1e-10, atol=1e-12)
    assert np.all(np.diag(same) == 0.0) and not np.allclose(same, same.T)  # anchor-relative
    # Gradient of the anchor-relative ratio vs finite differences.
    at, bt = tf.constant(a), tf.constant(b)
    with tf.GradientTape() as tape:
        tape.watch(at)
        value = tf.reduce_sum(ops.snr_distances(at, bt) * np.arange(20.0).reshape(5, 4))
    weights = np.arange(20.0).reshape(5, 4)
    numeric = numeric_grad(lambda v: sum(weights[i, j] * snr(v[i], b[j])
                                         for i in range(5) for j in range(4)), a)
    np.testing.assert_allclose(tape.gradient(value, at).numpy(), numeric, rtol=1e-6, atol=1e-8)


def test_distance_registry_and_errors():
    assert isinstance(distances.get("euclidean"), losses.EuclideanDistance)
    snr_distance = losses.SNRDistance(0.5)
    assert distances.get(snr_distance) is snr_distance
    assert distances.get(distances.serialize(snr_distance)) == snr_distance
    assert distances.get("snr").regularization_weight == defaults.SNR_REGULARIZATION_WEIGHT
    with pytest.raises(ValueError, match=r"distance must be one of \['cosine', 'euclidean', "
                                         r"'snr', 'squared_euclidean'\]"):
        losses.TripletLoss(distance="angular")
    squared = distances.get("squared_euclidean")
    a = np.array([[0.0, 1.0], [2.0, 0.0]])
    np.testing.assert_allclose(squared(tf.constant(a)).numpy(), [[0.0, 5.0], [5.0, 0.0]])
    with pytest.raises(ValueError, match="regularization_weight must be >= 0"):
        losses.SNRDistance(-1.0)
    x = np.array([[1.0, 2.0, -4.0], [0.5, 0.5, 0.5]])
    reg = float(losses.SNRDistance(0.1).regularizer(tf.constant(x)))
    assert reg == pytest.approx(0.1 * (1.0 + 1.5) / 2)
    assert float(losses.EuclideanDistance().regularizer(tf.constant(x))) == 0.0


def test_snr_margin_loss_value_and_gradient():
    layer = losses.MarginLoss(margin=0.2, beta_init=0.9, distance="snr")
    x, y = batch(3, 3, 4, seed=8)
    value, (grad,) = tf_value_and_grads(layer, y, x)
    f = lambda v: ref_margin(lip(v), y, 0.2, 0.9, dist=snr, reg=1e-3)  # noqa: E731
    assert value == pytest.approx(f(x), rel=1e-4)
    np.testing.assert_allclose(grad, numeric_grad(f, x), rtol=3e-3, atol=3e-4)


# ----------------------------------------------------------------------------- rho
def expected_switches(p_switch, seed, counter, y, ry=None):
    uniform = tf.random.stateless_uniform([len(y)], seed=[seed, counter]).numpy()
    has_pos = [any(same for _, same in partners(i, y, ry)) for i in range(len(y))]
    return (uniform < p_switch) & np.array(has_pos)


def test_rho_triplet_switches_anchors_with_the_seeded_draws():
    x, y = batch(4, 3, 5, seed=9)
    layer = losses.TripletLoss(0.3, p_switch=0.5, switch_seed=11)
    seen = []
    for counter in range(3):
        switched = expected_switches(0.5, 11, counter, y)
        seen.append(switched)
        value, (grad,) = tf_value_and_grads(layer, y, x)
        f = lambda v: ref_triplet(lip(v), y, margin=0.3, switched=switched)  # noqa: E731,B023
        assert value == pytest.approx(f(x), rel=1e-4)
        if counter == 0:
            np.testing.assert_allclose(grad, numeric_grad(f, x), rtol=3e-3, atol=3e-4)
    assert 0 < np.sum(seen) < np.size(seen)  # some, not all, anchors switched
    assert int(layer.switch_counter.numpy()) == 3
    # p_switch = 1: every anchor becomes (a, a, p); 0: the plain loss, no counter.
    always = losses.TripletLoss(0.3, p_switch=1.0)
    assert float(always(y, x)) == pytest.approx(
        ref_triplet(lip(x), y, margin=0.3, switched=np.ones(len(y), bool)), rel=1e-4)
    never = losses.TripletLoss(0.3)
    assert not hasattr(never, "switch_counter")
    assert float(never(y, x)) == pytest.approx(ref_triplet(lip(x), y, margin=0.3), rel=1e-4)
    with pytest.raises(ValueError, match=r"p_switch must be in \[0, 1\]"):
        losses.MarginLoss(p_switch=1.5)


def test_rho_margin_loss_value_and_gradients():
    x, y = batch(3, 3, 4, seed=10)
    layer = losses.MarginLoss(margin=0.2, beta_init=1.1, p_switch=0.4, switch_seed=3)
    switched = expected_switches(0.4, 3, 0, y)
    value, (grad,) = tf_value_and_grads(layer, y, x)
    f = lambda v: ref_margin(lip(v), y, 0.2, 1.1, switched=switched)  # noqa: E731
    assert value == pytest.approx(f(x), rel=1e-4)
    np.testing.assert_allclose(grad, numeric_grad(f, x), rtol=3e-3, atol=3e-4)
    # A small beta makes the self pair's positive term relu(margin - beta) active.
    low = losses.MarginLoss(margin=0.2, beta_init=0.1, p_switch=1.0)
    assert float(low(y, x)) == pytest.approx(
        ref_margin(lip(x), y, 0.2, 0.1, switched=np.ones(len(y), bool)), rel=1e-4)


def test_rho_draws_are_reproducible_checkpointed_and_at_the_rate(tmp_path):
    x, y = batch(4, 3, 5, seed=12)
    first, second = (losses.TripletLoss(0.2, p_switch=0.3, switch_seed=5) for _ in range(2))
    assert [float(first(y, x)) for _ in range(4)] == [float(second(y, x)) for _ in range(4)]
    other = losses.TripletLoss(0.2, p_switch=0.3, switch_seed=6)
    assert [float(other(y, x)) for _ in range(4)] != [float(first(y, x)) for _ in range(4)]
    checkpoint = tf.train.Checkpoint(loss=first)
    path = checkpoint.save(str(tmp_path / "rho"))
    upcoming = [float(first(y, x)) for _ in range(3)]
    checkpoint.restore(path).assert_consumed()
    assert [float(first(y, x)) for _ in range(3)] == upcoming
    # The switch rate is p_switch among anchors with a positive.
    counter = tf.Variable(0, dtype=tf.int64)
    pos = tf.ones([4000, 2], tf.bool)
    rate = np.mean([rho.draw_switches(0.2, 1, counter, pos).numpy().mean() for _ in range(5)])
    assert rate == pytest.approx(0.2, abs=0.01)
    assert int(counter.numpy()) == 5


@pytest.mark.slow
def test_rho_under_tf_function_and_mirrored_strategy_is_replica_consistent():
    x, y = batch(4, 2, 5, seed=13)
    eager = losses.TripletLoss(0.2, p_switch=0.5, switch_seed=2)
    expected = [float(eager(y, x)) for _ in range(2)]
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        mirrored = losses.TripletLoss(0.2, p_switch=0.5, switch_seed=2)
    step = tf.function(lambda a, b: mirrored(a, b))
    for value in expected:
        replicas = strategy.experimental_local_results(strategy.run(step, args=(y, x)))
        assert [float(r) for r in replicas] == pytest.approx([value, value], rel=1e-6)


# ----------------------------------------------------------------------------- CCP and XBM
WRAP_CASES = ["circle_small_gamma", "fastap", "ranked_list", "snr_triplet"]


@pytest.mark.parametrize("name", WRAP_CASES)
def test_ccp_wraps_the_new_pair_losses(name):
    make, reference = NEW_CASES[name]
    layer = losses.CCPLoss(make(), num_classes=3, embedding_size=4, proxies_per_class=2)
    layer.assign_proxies(np.random.default_rng(14).normal(size=(3, 2, 4)))
    x, y = batch(3, 3, 4, seed=15)
    proxies = np.asarray(layer.proxies, np.float64)
    proxy_labels = np.repeat(np.arange(3), 2)
    pair_term = frozen_reference(reference, y, x)
    proxy_term = frozen_reference(reference, y, x, proxies, proxy_labels)

    def full(v, p):
        return 0.1 * pair_term(v) + proxy_term(v, p)

    value, (gx, gp) = tf_value_and_grads(layer, y, x, extra=[layer.proxies])
    assert value == pytest.approx(full(x, proxies), rel=1e-4, abs=1e-6)
    np.testing.assert_allclose(gx, numeric_grad(lambda v: full(v, proxies), x),
                               rtol=3e-3, atol=3e-4)
    np.testing.assert_allclose(gp, numeric_grad(lambda p: full(x, p), proxies),
                               rtol=3e-3, atol=3e-4)


def test_ccp_around_rho_triplet_switches_both_terms():
    # p_switch = 1: every anchor is (a, a, p) against the batch and against its class's proxies.
    layer = losses.CCPLoss(losses.TripletLoss(0.3, p_switch=1.0), 3, 4, proxies_per_class=2)
    layer.assign_proxies(np.random.default_rng(22).normal(size=(3, 2, 4)))
    x, y = batch(3, 3, 4, seed=23)
    proxies, proxy_labels = lip(np.asarray(layer.proxies)), np.repeat(np.arange(3), 2)
    every = np.ones(len(y), bool)
    expected = (0.1 * ref_triplet(lip(x), y, margin=0.3, switched=every)
                + ref_triplet(lip(x), y, proxies, proxy_labels, margin=0.3, switched=every))
    assert float(layer(y, x)) == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("name", WRAP_CASES)
def test_cross_batch_memory_around_the_new_losses(name):
    make, reference = NEW_CASES[name]
    xbm = losses.CrossBatchMemory(make(), embedding_size=4, memory_size=12, start_at=0)
    for seed in (16, 17, 18):  # the memory term is on by the third step in either XBM timing
        x, y = batch(3, 2, 4, seed=seed)
        terms = xbm.loss_terms(y, x, training=True)
    memory = np.asarray(xbm.memory_embeddings, np.float64)
    memory_labels = np.asarray(xbm.memory_labels)
    assert np.sum(memory_labels >= 0) == 12
    assert float(terms["batch"]) == pytest.approx(reference(lip(x), y), rel=1e-4, abs=1e-6)
    assert float(terms["memory"]) == pytest.approx(
        reference(lip(x), y, memory, memory_labels), rel=1e-4, abs=1e-6)
    assert float(terms["loss"]) == pytest.approx(
        float(terms["batch"]) + float(terms["memory"]), rel=1e-6)


CONFIG_CASES = [
    lambda: losses.CircleLoss(0.3, 64.0),
    lambda: losses.FastAPLoss(num_bins=7),
    lambda: losses.RankedListLoss(1.1, 0.3, 8.0, 1.0, 0.7, distance="snr"),
    lambda: losses.ContrastiveLoss(0.1, 0.9, distance=losses.SNRDistance(0.02)),
    lambda: losses.TripletLoss(0.2, p_switch=0.2, switch_seed=4),
    lambda: losses.MarginLoss(0.2, 1.0, num_classes=4, p_switch=0.3, distance="snr"),
    lambda: losses.CCPLoss(losses.CircleLoss(), 4, 5, proxies_per_class=2),
    lambda: losses.CrossBatchMemory(losses.FastAPLoss(), 5, 16),
    lambda: losses.CCPLoss(losses.RankedListLoss(), 4, 5, proxies_per_class=2),
]


@pytest.mark.parametrize("make", CONFIG_CASES)
def test_get_config_round_trip(make):
    assert_config_round_trip(make(), seed=19)


# ----------------------------------------------------------------------------- spectral decay
def test_spectral_decay_matches_numpy_svd():
    rng = np.random.default_rng(20)
    x = rng.normal(size=(30, 6)) * np.array([5.0, 3.0, 2.0, 1.0, 0.5, 0.1])
    spectrum, score = spectral_decay(tf.constant(x, tf.float32))
    x = x.astype(np.float32).astype(np.float64)
    singular = np.linalg.svd(x, compute_uv=False)
    expected = singular / singular.sum()
    np.testing.assert_allclose(spectrum, expected, rtol=1e-9)
    uniform = 1 / 6
    assert score == pytest.approx(sum(uniform * np.log(uniform / s) for s in expected), rel=1e-9)
    skipped, skipped_score = spectral_decay(x, skip=1)
    tail = singular[1:] / singular[1:].sum()
    np.testing.assert_allclose(skipped, tail, rtol=1e-9)
    assert skipped_score == pytest.approx(np.sum(np.log((1 / 5) / tail)) / 5, rel=1e-9)
    # A flat spectrum (orthogonal rows of equal norm) scores 0; a collapsed one is infinite.
    assert spectral_decay(3 * np.eye(4))[1] == pytest.approx(0.0, abs=1e-12)
    assert spectral_decay(np.outer(np.ones(5), [1.0, 2.0, 3.0]))[1] > 30  # rank 1 of 3
    with pytest.raises(ValueError, match=r"embeddings must be \[N, D\]"):
        spectral_decay(np.ones(4))


# ----------------------------------------------------------------------------- PML (optional)
def test_values_match_pytorch_metric_learning():
    torch = pytest.importorskip("torch")
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    pml_distances = pytest.importorskip("pytorch_metric_learning.distances")
    # Norms > 1: the Lipschitz normalization equals PML's L2 normalization.
    x, y = batch(5, 4, 8, seed=21, scale=8.0)
    x[::3] *= 3.0
    emb, labels = torch.tensor(x, dtype=torch.float64), torch.tensor(y)

    def pml(loss):
        return float(loss(emb, labels))

    assert float(losses.CircleLoss()(y, x)) == pytest.approx(
        pml(pml_losses.CircleLoss(m=0.4, gamma=80)), rel=1e-4)
    assert float(losses.FastAPLoss()(y, x)) == pytest.approx(
        pml(pml_losses.FastAPLoss(num_bins=10)), rel=1e-4)
    # PML: (1 - imbalance) L_P + imbalance L_N, and 1e-5 per pair in its weight sums.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # PML warns about T_n > 5 (overflow)
        rll = pml_losses.RankedListLoss(margin=0.4, Tn=10, alpha=1.2, imbalance=0.5)
    assert float(losses.RankedListLoss()(y, x)) == pytest.approx(2 * pml(rll), rel=1e-3)
    normalized = lip(x)
    snr_pml = pml_distances.SNRDistance()(torch.tensor(normalized)).numpy()
    np.testing.assert_allclose(ops.snr_distances(tf.constant(normalized)).numpy(), snr_pml,
                               rtol=1e-9, atol=1e-12)
    snr_c2 = losses.ContrastiveLoss(0.1, 1.0, distance=losses.SNRDistance(0.0))
    pml_snr_c2 = pml_losses.SignalToNoiseRatioContrastiveLoss(pos_margin=0.1, neg_margin=1.0)
    assert float(snr_c2(y, x)) == pytest.approx(pml(pml_snr_c2), rel=1e-4)
