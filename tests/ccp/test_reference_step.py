"""The training step equals the reference's step, computed independently in float64 numpy.

SPEC §6 orders the reference's step: gradient of the C2-CCP loss w.r.t. the network weights and
the proxies -> ``+ lambda_t (w - w_prev)`` on the network weights only -> ``+ wd * w`` on every
non-BatchNorm weight, proxies included -> clip by global norm -> clip by value -> Adam (Keras'
classic form, epsilon 1e-7). At a projection (SPEC §5.3) ``w_prev`` becomes the instance's best
weights, ``lambda_t = lambda_0 * decay``, the proxies are rebuilt by greedy k-center from a pool
starting at the best proxies, and Adam's moments and step count carry on.

The library runs through its public API (``build_optimization``, ``Trainer.train_step``,
``AlternatingProjection.on_epoch_end``) on a tiny dense model (Dense + ReLU, a trainable
BatchNorm, a bias-free embedding head); the numpy side below is written from SPEC alone: forward
and hand-derived backward of every layer and of the loss, the transforms, Adam, k-center.
"""
import keras
import numpy as np
import pytest
import tensorflow as tf

import ccp

pytestmark = pytest.mark.slow  # steps and projections of whole training runs

IN, HIDDEN, D = 6, 5, 4
CLASSES, K, POOL = 3, 2, 3
PER_CLASS = 4
B = CLASSES * PER_CLASS
BN_EPS, BN_MOMENTUM = 1e-3, 0.99
STEPS_PER_EPOCH, EPOCHS = 4, 6            # 24 steps
EPOCH_VALUES = [0.5, 0.4, 0.6, 0.7, 0.3, 0.2]  # best after epoch 1, project after epoch 2


# ------------------------------------------------------------------ numpy reference (float64)
def forward(params, images):
    """Dense(relu) -> BatchNorm (training mode) -> Dense (no bias); returns output and cache."""
    pre = images @ params["w1"] + params["b1"]
    hidden = np.maximum(pre, 0.0)
    mean = hidden.mean(axis=0)
    var = hidden.var(axis=0)
    std = np.sqrt(var + BN_EPS)
    xhat = (hidden - mean) / std
    normed = xhat * params["gamma"] + params["beta"]
    embeddings = normed @ params["w2"]
    return embeddings, dict(images=images, pre=pre, xhat=xhat, std=std, normed=normed,
                            mean=mean, var=var)


def backward(params, cache, grad_embeddings):
    grads = {"w2": cache["normed"].T @ grad_embeddings}
    grad_normed = grad_embeddings @ params["w2"].T
    xhat, n = cache["xhat"], grad_normed.shape[0]
    grads["gamma"] = np.sum(grad_normed * xhat, axis=0)
    grads["beta"] = np.sum(grad_normed, axis=0)
    grad_xhat = grad_normed * params["gamma"]
    grad_hidden = (n * grad_xhat - grad_xhat.sum(axis=0)
                   - xhat * np.sum(grad_xhat * xhat, axis=0)) / (n * cache["std"])
    grad_pre = grad_hidden * (cache["pre"] > 0)
    grads["w1"] = cache["images"].T @ grad_pre
    grads["b1"] = grad_pre.sum(axis=0)
    return grads


def lipschitz(raw):
    """n(x) = x / max(|x|, 1) and its SPEC §2 backward."""
    norms = np.linalg.norm(raw, axis=1, keepdims=True)
    scale = np.maximum(norms, 1.0)
    u = raw / scale

    def back(grad):
        along = np.sum(u * grad, axis=1, keepdims=True) * (norms > 1.0)
        return (grad - along * u) / scale

    return u, back


def c2_with_grad(x, labels, refs, ref_labels, same_set, pos_margin, neg_margin):
    """C2 (mean over non-zero hinge terms, SPEC §4) and its gradients w.r.t. x and refs."""
    diff = x[:, None, :] - refs[None, :, :]
    dists = np.sqrt(np.sum(diff ** 2, axis=2))
    same = labels[:, None] == ref_labels[None, :]
    pos, neg = same.copy(), ~same
    if same_set:
        np.fill_diagonal(pos, False)
    pos_terms = np.where(pos, dists - pos_margin, 0.0)
    neg_terms = np.where(neg, neg_margin - dists, 0.0)
    pos_active, neg_active = pos_terms > 0, neg_terms > 0
    pos_count, neg_count = pos_active.sum() + 1e-16, neg_active.sum() + 1e-16
    loss = pos_terms[pos_active].sum() / pos_count + neg_terms[neg_active].sum() / neg_count
    grad_d = pos_active / pos_count - neg_active / neg_count
    with np.errstate(invalid="ignore", divide="ignore"):
        unit = np.where(dists[:, :, None] > 0, diff / dists[:, :, None], 0.0)
    pair_grad = grad_d[:, :, None] * unit                     # d loss / d x_i for pair (i, j)
    grad_x = pair_grad.sum(axis=1)
    grad_refs = -pair_grad.sum(axis=0)
    return loss, grad_x, grad_refs


def ccp_loss_with_grad(raw, labels, raw_proxies, proxy_labels, margins, weights):
    x, back_x = lipschitz(raw)
    w, back_w = lipschitz(raw_proxies)
    pair, gx_pair, gx_ref = c2_with_grad(x, labels, x, labels, True, *margins)
    proxy, gx_proxy, gw = c2_with_grad(x, labels, w, proxy_labels, False, *margins)
    loss = weights[0] * pair + weights[1] * proxy
    grad_x = weights[0] * (gx_pair + gx_ref) + weights[1] * gx_proxy
    return loss, back_x(grad_x), back_w(weights[1] * gw)


def greedy_k_center(candidates, centers, k):
    """SPEC §5, per class: farthest candidate from the cover, k times, lowest index on ties."""
    out = []
    for cand, cover in zip(candidates, centers):
        dist = np.min(np.sum((cand[:, None] - cover[None]) ** 2, axis=2), axis=1)
        picks = []
        for _ in range(k):
            i = int(np.argmax(dist))
            picks.append(cand[i])
            dist = np.minimum(dist, np.sum((cand - cand[i]) ** 2, axis=1))
        out.append(picks)
    return np.asarray(out)


class ReferenceRun:
    """The reference's training state and step, in float64."""

    NETWORK = ("w1", "b1", "gamma", "beta", "w2")
    NOT_DECAYED = ("gamma", "beta")  # BatchNorm

    def __init__(self, params, proxies, settings):
        self.params = {k: np.asarray(v, np.float64) for k, v in params.items()}
        self.params["proxies"] = np.asarray(proxies, np.float64).reshape(-1, D)
        self.s = settings
        self.m = {k: np.zeros_like(v) for k, v in self.params.items()}
        self.v = {k: np.zeros_like(v) for k, v in self.params.items()}
        self.iterations = 0
        self.lambda_t = 0.0
        self.w_prev = {k: self.params[k].copy() for k in self.NETWORK}
        self.best = None
        self.moving = (np.zeros(HIDDEN), np.ones(HIDDEN))
        self.proxy_labels = np.repeat(np.arange(CLASSES), K)
        self.acted = {"global_norm": 0, "value_clipped": 0, "value_kept": 0}

    def step(self, images, labels):
        s, p = self.s, self.params
        embeddings, cache = forward(p, images)
        loss, grad_e, grad_proxies = ccp_loss_with_grad(
            embeddings, labels, p["proxies"], self.proxy_labels, s["margins"], s["weights"])
        grads = backward(p, cache, grad_e)
        grads["proxies"] = grad_proxies
        for k in self.NETWORK:                                        # proximal term
            grads[k] = grads[k] + self.lambda_t * (p[k] - self.w_prev[k])
        for k in grads:                                               # weight decay
            if k not in self.NOT_DECAYED:
                grads[k] = grads[k] + s["weight_decay"] * p[k]
        norm = np.sqrt(sum(np.sum(g ** 2) for g in grads.values()))   # clip by global norm
        self.acted["global_norm"] += int(norm > s["clip_norm"])
        grads = {k: g * s["clip_norm"] / max(norm, s["clip_norm"]) for k, g in grads.items()}
        for g in grads.values():
            self.acted["value_clipped"] += int(np.sum(np.abs(g) > s["clip_value"]))
            self.acted["value_kept"] += int(np.sum(np.abs(g) <= s["clip_value"]))
        grads = {k: np.clip(g, -s["clip_value"], s["clip_value"]) for k, g in grads.items()}
        self.iterations += 1                                          # Adam
        t, b1, b2 = self.iterations, 0.9, 0.999
        alpha = s["lr"] * np.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        for k, g in grads.items():
            self.m[k] += (g - self.m[k]) * (1 - b1)
            self.v[k] += (g * g - self.v[k]) * (1 - b2)
            p[k] = p[k] - alpha * self.m[k] / (np.sqrt(self.v[k]) + 1e-7)
        mean, var = cache["mean"], cache["var"]                       # BatchNorm statistics
        self.moving = tuple(BN_MOMENTUM * old + (1 - BN_MOMENTUM) * new
                            for old, new in zip(self.moving, (mean, var)))
        return loss

    def remember_best(self):
        self.best = {k: v.copy() for k, v in self.params.items()}

    def project(self, pool):
        self.w_prev = {k: self.best[k].copy() for k in self.NETWORK}
        self.lambda_t = self.s["lambda_0"] * self.s["decay"]
        cover = self.best["proxies"].reshape(CLASSES, K, D)
        self.params["proxies"] = greedy_k_center(pool, cover, K).reshape(-1, D)


# ------------------------------------------------------------------ the library
def build_library(params, proxies, s):
    inputs = keras.Input((IN,))
    hidden = keras.layers.Dense(HIDDEN, activation="relu", name="dense")(inputs)
    normed = keras.layers.BatchNormalization(epsilon=BN_EPS, momentum=BN_MOMENTUM,
                                             name="bn")(hidden)
    outputs = keras.layers.Dense(D, use_bias=False, name="embedding")(normed)
    model = keras.Model(inputs, outputs)
    model.get_layer("dense").set_weights([params["w1"], params["b1"]])
    model.get_layer("bn").set_weights([params["gamma"], params["beta"], np.zeros(HIDDEN),
                                       np.ones(HIDDEN)])
    model.get_layer("embedding").set_weights([params["w2"]])
    loss = ccp.losses.CCPLoss(ccp.losses.ContrastiveLoss(*s["margins"]), CLASSES, D,
                              proxies_per_class=K, pair_weight=s["weights"][0],
                              proxy_weight=s["weights"][1])
    loss.assign_proxies(proxies)
    projection = ccp.projection.AlternatingProjection(
        model.trainable_variables, proxy_owner=loss, lambda_0=s["lambda_0"], decay=s["decay"],
        patience=1, min_epochs_per_instance=1, min_delta=1e-5, pool_size=POOL, monitor_lag=0)
    optimization = ccp.training.build_optimization(
        model, loss, projection=projection, learning_rate=s["lr"], adam_epsilon=1e-7,
        weight_decay=s["weight_decay"], clip_norm=s["clip_norm"], clip_value=s["clip_value"])
    trainer = ccp.training.Trainer(model, loss, optimization, projection=projection,
                                   steps_per_epoch=STEPS_PER_EPOCH, progress_bar=False)
    return model, loss, projection, trainer


def library_variables(model, loss):
    dense, bn = model.get_layer("dense"), model.get_layer("bn")
    return {"w1": dense.kernel, "b1": dense.bias, "gamma": bn.gamma, "beta": bn.beta,
            "w2": model.get_layer("embedding").kernel, "proxies": loss.proxies}


def library_state(model, loss, trainer):
    bn = model.get_layer("bn")
    variables = library_variables(model, loss)
    optimizer = trainer.optimizers["train"]
    # Keras keeps Adam's slots in lists indexed by the variable (no public accessor).
    slots = {k: optimizer._get_variable_index(v) for k, v in variables.items()}
    return ({k: v.numpy() for k, v in variables.items()},
            {k: optimizer._momentums[i].numpy() for k, i in slots.items()},
            {k: optimizer._velocities[i].numpy() for k, i in slots.items()},
            int(optimizer.iterations.numpy()),
            (bn.moving_mean.numpy(), bn.moving_variance.numpy()))


def _close(got, want, what, step, rtol):
    scale = max(np.abs(want).max(), 1e-12)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale,
                               err_msg=f"{what} after step {step}")


SETTINGS = {
    # Every transform acts: the proximal term (after the projection) and weight decay are as
    # large as the loss gradient, global-norm clipping scales every step, value clipping cuts
    # some entries and not others.
    "every_transform_acts": dict(lr=1e-2, weight_decay=0.3, clip_norm=0.3, clip_value=0.03,
                                 lambda_0=3.0, decay=1.0, margins=(0.1, 0.9), weights=(0.1, 1.0)),
    # The paper's optimizer settings (SPEC §6; learning rate raised to 1e-3 so that 24 steps
    # move the weights well above float32 rounding).
    "paper": dict(lr=1e-3, weight_decay=1e-4, clip_norm=10.0, clip_value=10.0, lambda_0=2e-4,
                  decay=1.0, margins=(0.0, 0.5), weights=(0.1, 1.0)),
}


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_c2_ccp_steps_and_projection_equal_the_reference(name):
    s = SETTINGS[name]
    rng = np.random.default_rng(31)
    params = {"w1": rng.normal(0, 0.6, (IN, HIDDEN)), "b1": rng.normal(0, 0.1, HIDDEN),
              "gamma": rng.uniform(0.8, 1.2, HIDDEN), "beta": rng.normal(0, 0.1, HIDDEN),
              "w2": rng.normal(0, 0.5, (HIDDEN, D))}
    params = {k: v.astype(np.float32) for k, v in params.items()}
    proxies = rng.normal(0, 0.6, (CLASSES, K, D)).astype(np.float32)
    steps = STEPS_PER_EPOCH * EPOCHS
    images = rng.normal(0, 1.0, (steps, B, IN)).astype(np.float32)
    labels = np.tile(np.repeat(np.arange(CLASSES), PER_CLASS), (steps, 1)).astype(np.int32)
    pools = {i: rng.normal(0, 0.6, (CLASSES, POOL, D)).astype(np.float32) for i in range(3)}

    model, loss, projection, trainer = build_library(params, proxies, s)
    reference = ReferenceRun(params, proxies, s)
    iterator = trainer.distribute(tf.data.Dataset.from_tensor_slices((images, labels)))
    projections = 0
    for step in range(1, steps + 1):
        terms = trainer.train_step(iterator)
        want_loss = reference.step(images[step - 1].astype(np.float64), labels[step - 1])
        assert float(terms["loss"]) == pytest.approx(want_loss, rel=1e-5), f"step {step}"
        weights, m, v, iterations, moving = library_state(model, loss, trainer)
        assert iterations == reference.iterations == step
        for key in weights:
            _close(weights[key], reference.params[key], key, step, 2e-5)
            _close(m[key], reference.m[key], f"Adam m of {key}", step, 2e-4)
            _close(v[key], reference.v[key], f"Adam v of {key}", step, 2e-4)
        for got, want in zip(moving, reference.moving):
            _close(got, want, "BatchNorm moving statistics", step, 2e-5)
        if step % STEPS_PER_EPOCH == 0:
            epoch = step // STEPS_PER_EPOCH
            decision = projection.on_epoch_end(EPOCH_VALUES[epoch - 1], pool_fn=pools.get)
            if decision.action == "new_best":
                reference.remember_best()
            elif decision.action == "project":
                projections += 1
                reference.project(pools[projections])
                assert float(projection.lambda_t.numpy()) == pytest.approx(reference.lambda_t)
                _close(loss.proxies.numpy(), reference.params["proxies"], "projected proxies",
                       step, 1e-6)
                variables = library_variables(model, loss)
                for key in reference.NETWORK:
                    _close(projection.anchor.anchor_for(variables[key]).numpy(),
                           reference.w_prev[key], f"w_prev of {key}", step, 2e-5)
    assert projections >= 1 and reference.lambda_t > 0
    if name == "every_transform_acts":
        acted = reference.acted
        assert acted["global_norm"] == steps, acted
        assert acted["value_clipped"] > 0 and acted["value_kept"] > 0, acted
