"""SPEC §4c: the reference's last computation-head switches vs independent float64 numpy
references (explicit loops), gradients vs central finite differences of those references.

- miners rank by the loss's own pdist (``-x.y`` for the cosine losses);
- ``distance="cosine"``: pdist ``-x.y`` for C2, triplet, margin and inside CCP;
- ``normalization="l2"``: plain ``x / ||x||`` of embeddings and proxies (``lipschitz_cont: false``);
- ProxyNCA (and Proxy Synthesis over it) with K > 1 proxies per class;
- the reference's distance-weighted draw beside the paper's.

Tolerances (from the float32 error of the formulas, not from one machine's output): every input
has norm <= ~2 and ``D <= 8``, so a float32 pdist carries an absolute error of at most
``(D + 4) eps ~ 1.5e-6`` (a D-term dot product, the normalization's norm and division, one more
rounding for a square root or a sign), whatever order a matmul kernel (oneDNN or Eigen, AVX2 or
AVX-512) sums in. The losses below are means or log-sum-exps of O(1) terms, Lipschitz in the
pdists with a constant <= the largest scale used (temperature 1/0.2 = 5, MS beta 10): their
float32 error is <= 5 * 1.5e-6 = 7.5e-6 absolute; for losses >= 0.5 that is ``rel <= 1.5e-5``:
``VALUE_RTOL``. Gradients: float32 error of the same order on entries of O(0.1..1), and the
float64 central differences (h = 1e-5) are exact to ~h^2 f''' ~ 1e-9 except within h of a hinge
kink (none of the batches here has a pdist within 1e-4 of a margin): ``GRAD_TOL`` leaves the
ratio 1e-4 / 7.5e-6 ~ 10 of headroom in ``atol`` and a relative slack for large entries.
"""
import numpy as np
import pytest
import tensorflow as tf

from ccp import layers, losses
from ccp.losses import miners
from tests.ccp.loss_testing import (assert_config_round_trip, batch, lip, np_hard_negatives,
                                    numeric_grad, value_and_grads)

VALUE_RTOL = 2e-5
GRAD_TOL = dict(rtol=3e-3, atol=1e-4)


# ----------------------------------------------------------------------------- references
def unit(x):
    """Float64 plain L2 normalization of the rows of ``x`` (rows here are far from 0, so
    ``tf.nn.l2_normalize``'s 1e-12 floor never binds)."""
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def masks(y, ry=None):
    """Positive / negative pair masks, a sample never paired with itself."""
    ref = y if ry is None else ry
    pos = np.zeros((len(y), len(ref)), bool)
    neg = np.zeros_like(pos)
    for i in range(len(y)):
        for j in range(len(ref)):
            if ry is None and i == j:
                continue
            pos[i, j] = y[i] == ref[j]
            neg[i, j] = y[i] != ref[j]
    return pos, neg


def neg_dot(a, b=None):
    """The reference's cosine pdist ``-(a_i . b_j)`` with explicit sums."""
    b = a if b is None else b
    return np.array([[-float(np.sum(u * v)) for v in b] for u in a])


def euclid(a, b=None):
    b = a if b is None else b
    return np.array([[np.sqrt(float(np.sum((u - v) ** 2))) for v in b] for u in a])


def mean_nonzero(terms):
    terms = [t for t in terms if t > 0]
    return sum(terms) / (len(terms) + 1e-16)


def ref_c2(pdist, pos, neg, pm, nm):
    n, m = pdist.shape
    return (mean_nonzero(pdist[i, j] - pm for i in range(n) for j in range(m) if pos[i, j])
            + mean_nonzero(nm - pdist[i, j] for i in range(n) for j in range(m) if neg[i, j]))


def ref_triplet(pdist, pos, neg, margin):
    n, m = pdist.shape
    return mean_nonzero(pdist[a, p] - pdist[a, q] + margin for a in range(n)
                        for p in range(m) if pos[a, p] for q in range(m) if neg[a, q])


def ref_margin(pdist, pos, neg, margin, beta):
    n, m = pdist.shape
    return (mean_nonzero(pdist[i, j] - beta + margin
                         for i in range(n) for j in range(m) if pos[i, j])
            + mean_nonzero(beta - pdist[i, j] + margin
                           for i in range(n) for j in range(m) if neg[i, j]))


def ref_c1(sims, pos, neg, margin):
    n, m = sims.shape
    total = sum(max(1.0 - 1e-5 - sims[i, j], 0.0) for i in range(n) for j in range(m)
                if pos[i, j])
    total += sum(max(sims[i, j] - margin, 0.0) for i in range(n) for j in range(m)
                 if neg[i, j])
    return total / n


def ref_ms(sims, pos, neg, alpha, beta, base):
    total = 0.0
    for i in range(sims.shape[0]):
        p = sum(np.exp(-alpha * (sims[i, j] - base)) for j in range(sims.shape[1]) if pos[i, j])
        q = sum(np.exp(beta * (sims[i, j] - base)) for j in range(sims.shape[1]) if neg[i, j])
        total += np.log1p(p) / alpha + np.log1p(q) / beta
    return total / sims.shape[0]


def ref_nca(x, y, w, wy, temperature):
    """ProxyNCA: softmax over every proxy, class probability = mass on the own-class ones."""
    total = 0.0
    for i in range(len(x)):
        logits = np.array([float(np.sum(x[i] * w[p])) for p in range(len(w))]) / temperature
        e = np.exp(logits - logits.max())
        own = sum(e[p] for p in range(len(w)) if wy[p] == y[i]) / e.sum()
        total += -np.log(1e-16 + own)
    return total / len(x)


def short_rows_batch(seed):
    """9 samples of 3 classes in D = 4 with most norms < 1: there the Lipschitz normalization
    leaves them as they are and ``-x.y`` orders pairs unlike the Euclidean distance."""
    x, y = batch(3, 3, 4, seed=seed, scale=0.9)
    return x, y


# ----------------------------------------------------------------------------- miners
@pytest.mark.parametrize("name", ["c1", "ms", "c2_cosine"])
def test_hard_negatives_rank_by_the_loss_pdist(name):
    x, y = short_rows_batch(seed=31)
    v = lip(x)
    pos, neg = masks(y)
    keep = np_hard_negatives(neg_dot(v), pos, neg)
    # The batch discriminates: ranking by the Euclidean distance would keep other negatives.
    assert not np.array_equal(keep, np_hard_negatives(euclid(v), pos, neg))
    make, reference = {
        "c1": (lambda: losses.CosineContrastiveLoss(0.2, miner="hard_negatives"),
               lambda u: ref_c1(-neg_dot(u), pos, keep, 0.2)),
        "ms": (lambda: losses.MultiSimilarityLoss(2.0, 10.0, 0.3, miner="hard_negatives"),
               lambda u: ref_ms(-neg_dot(u), pos, keep, 2.0, 10.0, 0.3)),
        "c2_cosine": (lambda: losses.ContrastiveLoss(-0.9, 0.1, distance="cosine",
                                                     miner="hard_negatives"),
                      lambda u: ref_c2(neg_dot(u), pos, keep, -0.9, 0.1)),
    }[name]
    layer = make()
    value, (gx,) = value_and_grads(lambda t: layer(y, t), x)
    assert value == pytest.approx(reference(v), rel=VALUE_RTOL)
    np.testing.assert_allclose(gx, numeric_grad(lambda r: reference(lip(r)), x), **GRAD_TOL)


# ----------------------------------------------------------------------------- cosine distance
@pytest.mark.parametrize("name", ["c2", "triplet", "margin"])
def test_cosine_distance_pair_losses_values_and_gradients(name):
    x, y = batch(3, 3, 5, seed=32)
    pos, neg = masks(y)
    make, reference = {
        "c2": (lambda: losses.ContrastiveLoss(-0.8, 0.1, distance="cosine"),
               lambda p: ref_c2(p, pos, neg, -0.8, 0.1)),
        "triplet": (lambda: losses.TripletLoss(0.3, distance="cosine"),
                    lambda p: ref_triplet(p, pos, neg, 0.3)),
        "margin": (lambda: losses.MarginLoss(0.2, beta_init=-0.1, distance="cosine"),
                   lambda p: ref_margin(p, pos, neg, 0.2, -0.1)),
    }[name]
    layer = make()
    value, (gx,) = value_and_grads(lambda t: layer(y, t), x)
    assert value == pytest.approx(reference(neg_dot(lip(x))), rel=VALUE_RTOL)
    np.testing.assert_allclose(gx, numeric_grad(lambda r: reference(neg_dot(lip(r))), x),
                               **GRAD_TOL)


def test_cosine_distance_inside_ccp_both_terms_and_proxy_gradients():
    layer = losses.CCPLoss(losses.ContrastiveLoss(-0.7, 0.0, distance="cosine"), 3, 4,
                           proxies_per_class=2)
    layer.assign_proxies(np.random.default_rng(33).normal(size=(3, 2, 4)))
    x, y = batch(3, 3, 4, seed=34)
    wy = np.repeat(np.arange(3), 2)
    pos, neg = masks(y)
    ppos, pneg = masks(y, wy)

    def reference(raw, raw_w):
        v, w = lip(raw), lip(raw_w)
        return (0.1 * ref_c2(neg_dot(v), pos, neg, -0.7, 0.0)
                + ref_c2(neg_dot(v, w), ppos, pneg, -0.7, 0.0))

    raw_w = np.asarray(layer.proxies, np.float64)
    value, (gx, gw) = value_and_grads(lambda t: layer(y, t), x, [layer.proxies])
    assert value == pytest.approx(reference(x, raw_w), rel=VALUE_RTOL)
    np.testing.assert_allclose(gx, numeric_grad(lambda r: reference(r, raw_w), x), **GRAD_TOL)
    np.testing.assert_allclose(gw, numeric_grad(lambda p: reference(x, p), raw_w), **GRAD_TOL)
    euclidean = losses.CCPLoss(losses.ContrastiveLoss(-0.7, 0.0), 3, 4, proxies_per_class=2)
    euclidean.assign_proxies(raw_w)
    assert value != pytest.approx(float(euclidean(y, x)), rel=1e-3)


# ----------------------------------------------------------------------------- plain L2
def test_l2_normalize_matches_numpy_and_its_gradient():
    x, _ = batch(3, 2, 5, seed=35)  # rows both inside and outside the unit ball
    np.testing.assert_allclose(layers.l2_normalize(x).numpy(), unit(x), rtol=8 * np.finfo(
        np.float32).eps, atol=0)  # a norm (D products, a sqrt) and a division: < 8 eps
    weights = np.random.default_rng(36).normal(size=x.shape)
    value, (gx,) = value_and_grads(lambda t: tf.reduce_sum(weights * layers.l2_normalize(t)), x)
    np.testing.assert_allclose(gx, numeric_grad(lambda r: np.sum(weights * unit(r)), x),
                               **GRAD_TOL)
    assert not np.allclose(unit(x), lip(x))  # the batch has short rows: the two differ


def _l2_cases():
    wy2 = np.repeat(np.arange(3), 2)
    return {
        "c2": (lambda: losses.ContrastiveLoss(0.1, 0.9, normalization="l2"), None,
               lambda x, y, w: ref_c2(euclid(unit(x)), *masks(y), 0.1, 0.9)),
        "ms": (lambda: losses.MultiSimilarityLoss(2.0, 10.0, 0.5, normalization="l2"), None,
               lambda x, y, w: ref_ms(-neg_dot(unit(x)), *masks(y), 2.0, 10.0, 0.5)),
        "proxy_nca": (lambda: losses.ProxyNCALoss(3, 4, temperature=0.2, proxies_per_class=2,
                                                  normalization="l2"), (3, 2, 4),
                      lambda x, y, w: ref_nca(unit(x), y, unit(w), wy2, 0.2)),
        "c2_ccp": (lambda: losses.CCPLoss(losses.ContrastiveLoss(0.1, 0.9, normalization="l2"),
                                          3, 4, proxies_per_class=2), (3, 2, 4),
                   lambda x, y, w: 0.1 * ref_c2(euclid(unit(x)), *masks(y), 0.1, 0.9)
                   + ref_c2(euclid(unit(x), unit(w)), *masks(y, wy2), 0.1, 0.9)),
    }


@pytest.mark.parametrize("name", ["c2", "ms", "proxy_nca", "c2_ccp"])
def test_plain_l2_normalization_of_embeddings_and_proxies(name):
    make, proxy_shape, reference = _l2_cases()[name]
    layer = make()
    assert layer.normalization == "l2"
    x, y = batch(3, 3, 4, seed=37)
    variables, raw_w = [], None
    if proxy_shape is not None:
        layer.assign_proxies(np.random.default_rng(38).normal(size=proxy_shape) * 0.5)
        variables, raw_w = [layer.proxies], np.asarray(layer.proxies, np.float64)
    value, grads = value_and_grads(lambda t: layer(y, t), x, variables)
    assert value == pytest.approx(reference(x, y, raw_w), rel=VALUE_RTOL)
    np.testing.assert_allclose(grads[0], numeric_grad(lambda r: reference(r, y, raw_w), x),
                               **GRAD_TOL)
    if raw_w is not None:
        np.testing.assert_allclose(grads[1], numeric_grad(lambda p: reference(x, y, p), raw_w),
                                   **GRAD_TOL)
    else:  # (the round trip's batch has 4 classes in D = 5: proxy losses are checked below)
        assert_config_round_trip(layer, seed=39)


def test_wrappers_take_the_wrapped_losses_normalization():
    base = losses.ContrastiveLoss(normalization="l2")
    assert losses.CCPLoss(base, 3, 4).normalization == "l2"
    assert losses.CrossBatchMemory(losses.ContrastiveLoss(normalization="l2"), 4, 8) \
        .normalization == "l2"
    nca = losses.ProxyNCALoss(3, 4, normalization="l2")
    assert losses.ProxySynthesisLoss(nca).normalization == "l2"
    with pytest.raises(ValueError, match="differs from the wrapped loss's 'l2'"):
        losses.CCPLoss(losses.ContrastiveLoss(normalization="l2"), 3, 4,
                       normalization="lipschitz")
    with pytest.raises(ValueError, match="normalize differently"):
        losses.WeightedLoss([losses.ContrastiveLoss(normalization="l2"),
                             losses.TripletLoss()], [1.0, 1.0])
    with pytest.raises(ValueError, match=r"normalization must be one of \['l2', 'lipschitz'\]"):
        losses.TripletLoss(normalization="unit")
    for layer in (losses.CCPLoss(losses.ContrastiveLoss(normalization="l2"), 4, 5),
                  losses.CrossBatchMemory(losses.TripletLoss(normalization="l2"), 5, 16),
                  losses.ProxySynthesisLoss(losses.ProxyNCALoss(4, 5, normalization="l2"))):
        kwargs = {"mix_rate": 0.4} if isinstance(layer, losses.ProxySynthesisLoss) else {}
        assert_config_round_trip(layer, seed=49, **kwargs)


def test_proxy_synthesis_mixtures_use_the_base_normalization():
    base = losses.ProxyNCALoss(3, 4, temperature=0.2, proxies_per_class=2, normalization="l2")
    base.assign_proxies(np.random.default_rng(40).normal(size=(3, 2, 4)) * 0.5)
    layer = losses.ProxySynthesisLoss(base, mu=0.5)
    x, y = batch(3, 2, 4, seed=41)
    raw_w = np.asarray(base.proxies, np.float64)
    wy = np.repeat(np.arange(3), 2)
    lam = 0.3

    def reference(raw):
        v, w = unit(raw), unit(raw_w)
        count = int(round(len(v) * 0.5))
        fake_x = [lam * v[i] + (1 - lam) * v[i - 1] for i in range(count)]
        fake_w = [lam * w[y[i] * 2] + (1 - lam) * w[y[i - 1] * 2] for i in range(count)]
        pseudo = np.arange(3, 3 + count)
        return ref_nca(np.concatenate([v, unit(np.array(fake_x))]), np.concatenate([y, pseudo]),
                       np.concatenate([w, unit(np.array(fake_w))]),
                       np.concatenate([wy, pseudo]), 0.2)

    value, (gx,) = value_and_grads(lambda t: layer(y, t, mix_rate=lam), x)
    assert value == pytest.approx(reference(x), rel=VALUE_RTOL)
    np.testing.assert_allclose(gx, numeric_grad(reference, x), **GRAD_TOL)


# ----------------------------------------------------------------------------- ProxyNCA, K > 1
def test_proxy_nca_with_several_proxies_per_class():
    layer = losses.ProxyNCALoss(3, 4, temperature=0.2, proxies_per_class=3)
    assert layer.proxies.shape == (9, 4)
    layer.assign_proxies(np.random.default_rng(42).normal(size=(3, 3, 4)))
    x, y = batch(3, 2, 4, seed=43)
    wy = np.repeat(np.arange(3), 3)
    raw_w = np.asarray(layer.proxies, np.float64)

    def reference(raw, p):
        return ref_nca(lip(raw), y, lip(p), wy, 0.2)

    value, (gx, gw) = value_and_grads(lambda t: layer(y, t), x, [layer.proxies])
    assert value == pytest.approx(reference(x, raw_w), rel=VALUE_RTOL)
    np.testing.assert_allclose(gx, numeric_grad(lambda r: reference(r, raw_w), x), **GRAD_TOL)
    np.testing.assert_allclose(gw, numeric_grad(lambda p: reference(x, p), raw_w), **GRAD_TOL)
    # Not the same as scoring the class by its first proxy alone.
    first = ref_nca(lip(x), y, lip(raw_w[::3]), np.arange(3), 0.2)
    assert value != pytest.approx(first, rel=1e-3)
    assert_config_round_trip(losses.ProxyNCALoss(4, 5, proxies_per_class=3, normalization="l2"),
                             seed=44)


def test_proxy_synthesis_over_proxy_nca_with_several_proxies_per_class():
    base = losses.ProxyNCALoss(3, 4, temperature=0.2, proxies_per_class=2)
    base.assign_proxies(np.random.default_rng(45).normal(size=(3, 2, 4)))
    layer = losses.ProxySynthesisLoss(base, mu=1.0)
    x, y = batch(3, 2, 4, seed=46)
    raw_w = np.asarray(base.proxies, np.float64)
    wy = np.repeat(np.arange(3), 2)
    lam = 0.6

    def reference(raw, p):
        v, w = lip(raw), lip(p)
        fake_x = [lam * v[i] + (1 - lam) * v[i - 1] for i in range(len(v))]
        # the synthetic proxy mixes each class's first proxy (row c * K)
        fake_w = [lam * w[y[i] * 2] + (1 - lam) * w[y[i - 1] * 2] for i in range(len(v))]
        pseudo = np.arange(3, 3 + len(v))
        return ref_nca(np.concatenate([v, lip(np.array(fake_x))]), np.concatenate([y, pseudo]),
                       np.concatenate([w, lip(np.array(fake_w))]),
                       np.concatenate([wy, pseudo]), 0.2)

    value, (gx, gw) = value_and_grads(lambda t: layer(y, t, mix_rate=lam), x, [base.proxies])
    assert value == pytest.approx(reference(x, raw_w), rel=VALUE_RTOL)
    np.testing.assert_allclose(gx, numeric_grad(lambda r: reference(r, raw_w), x), **GRAD_TOL)
    np.testing.assert_allclose(gw, numeric_grad(lambda p: reference(x, p), raw_w), **GRAD_TOL)


# ----------------------------------------------------------------------------- distance-weighted
F32_TINY = np.log(np.finfo(np.float32).tiny)        # -87.3: below, exp() is subnormal in float32
F32_SUBNORMAL = np.log(np.finfo(np.float32).smallest_subnormal)  # -103.3: below, exp() is 0


def np_reference_dw_weights(d, neg, dim, cutoff=0.5, nonzero_loss_cutoff=1.4):
    """The reference's weights in float64 with its float32 underflow made explicit:
    ``exp(log w - global max)`` is 0 where it is below float32's range (the test data keep
    every exponent outside the subnormal band, where flush-to-zero settings would decide)."""
    rows, cols = d.shape
    c = np.maximum(d, cutoff)
    log_w = (2 - dim) * np.log(c) - (dim - 3) / 2 * np.log(1 - c * c / 4)
    top = log_w.max()
    w = np.zeros((rows, cols))
    for i in range(rows):
        for j in range(cols):
            if neg[i, j] and c[i, j] < nonzero_loss_cutoff and log_w[i, j] - top > F32_TINY:
                w[i, j] = np.exp(log_w[i, j] - top)
        total = w[i].sum()
        w[i] = w[i] / total if total > 0 else neg[i] / max(neg[i].sum(), 1)
    return w, log_w - top


def test_reference_distance_weighted_weights_global_normalizer_and_underflow():
    dim = 256
    d = np.array([[0.0, 0.3, 0.55, 0.62, 0.68, 1.3, 1.5],     # the matrix's max: d <= 0.5
                  [0.3, 0.0, 0.6, 0.65, 1.0, 1.2, 1.35],
                  [0.95, 1.0, 0.0, 1.1, 1.2, 1.3, 1.45]])     # every negative underflows
    y, ry = np.array([0, 1, 2]), np.array([0, 1, 2, 3, 3, 4, 4])
    pos, neg = masks(y, ry)
    expected, exponent = np_reference_dw_weights(d, neg, dim)
    # The data avoid the subnormal band (else the float32 underflow point is machine-dependent).
    assert not np.any((exponent < F32_TINY) & (exponent > F32_SUBNORMAL))
    got = miners.reference_distance_weighted_weights(tf.constant(d, tf.float32),
                                                     tf.constant(neg), float(dim)).numpy()
    # A float32 exponent of magnitude <= 185 carries <= 185 * 4 eps relative error after exp().
    np.testing.assert_allclose(got, expected, rtol=185 * 4 * np.finfo(np.float32).eps,
                               atol=1e-30)
    np.testing.assert_allclose(got[2], neg[2] / neg[2].sum())  # all underflowed: uniform
    # Under the global maximum (from d <= 0.5) d = 1.3 and d = 1.0 underflow to 0, d = 0.68
    # does not; d = 1.5 is beyond the nonzero-loss cutoff.
    assert got[0, 5] == 0.0 and got[1, 4] == 0.0 and got[0, 4] > 0.0 and got[0, 6] == 0.0
    # The paper's weights are per row: none of these negatives is left at probability 0.
    paper = miners.distance_weighted_log_weights(tf.constant(d), tf.constant(neg), float(dim))
    assert np.all(np.isfinite(paper.numpy()[2][neg[2] & (d[2] < 1.4)]))


def test_reference_distance_weighted_draws_follow_softmax_of_the_weights():
    dim = 16
    d = np.array([[0.0, 0.7, 0.9, 1.1, 1.3, 1.6],
                  [0.8, 0.0, 0.5, 0.6, 1.0, 1.2]])
    y, ry = np.array([0, 1]), np.array([0, 1, 2, 2, 3, 3])
    pos, neg = masks(y, ry)  # one positive per row (columns 0 and 1): one draw per row
    weights, _ = np_reference_dw_weights(d, neg, dim)
    probabilities = np.exp(weights) / np.exp(weights).sum(axis=1, keepdims=True)
    # 600 copies of the two rows in one call: the same global maximum (the same values), one
    # draw per row (one positive each), independent draws across rows.
    draws = 600
    tiled = [np.tile(m, (draws, 1)) for m in (d, pos, neg)]
    p_mask, n_mask = miners.reference_distance_weighted(
        tf.constant(tiled[0], tf.float32), tf.constant(tiled[1]), tf.constant(tiled[2]),
        float(dim), tf.constant([5, 1], tf.int64))
    n_mask = n_mask.numpy()
    np.testing.assert_array_equal(p_mask.numpy(), tiled[1])
    assert not np.any(n_mask & ~tiled[2]) and np.all(n_mask.sum(axis=1) <= 1)
    frequency = n_mask.reshape(draws, *d.shape).mean(axis=0)
    sigma = np.sqrt(probabilities * (1 - probabilities) / draws)
    # Every column is drawable (weights are logits): a negative at weight 0 (d >= 1.4) is still
    # drawn with probability exp(0) / sum exp(w); non-negatives drawn are dropped.
    assert np.all(np.abs(frequency - probabilities)[neg] < 5 * sigma[neg] + 1e-3)
    assert frequency[0, 5] > 0.05
    again = miners.reference_distance_weighted(
        tf.constant(d, tf.float32), tf.constant(pos), tf.constant(neg), float(dim),
        tf.constant([3, 1], tf.int64))[1].numpy()
    first = miners.reference_distance_weighted(
        tf.constant(d, tf.float32), tf.constant(pos), tf.constant(neg), float(dim),
        tf.constant([3, 1], tf.int64))[1].numpy()
    np.testing.assert_array_equal(again, first)


def test_reference_distance_weighted_miner_in_a_loss():
    x, y = batch(4, 3, 6, seed=47)
    first, second = (losses.ContrastiveLoss(
        0.0, 0.9, miner=miners.ReferenceDistanceWeighted(seed=2)) for _ in range(2))
    values = [float(first(y, x)) for _ in range(3)]
    assert values == [float(second(y, x)) for _ in range(3)]
    assert all(np.isfinite(values))
    assert miners.get("distance_weighted_reference") == miners.ReferenceDistanceWeighted()
    assert_config_round_trip(losses.TripletLoss(0.2, miner="distance_weighted_reference"),
                             seed=48)
