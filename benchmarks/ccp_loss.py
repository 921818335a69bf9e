"""CCP loss forward + backward: ms per call, ours vs baselines measured in the same run.

The computation (issue 13): C2-CCP with C2 (0, 0.5), batch B = 32 (8 classes x 4), D = 128,
100 classes x 8 proxies; value and gradients w.r.t. the embeddings and the proxy bank, inside
one ``tf.function`` per call (as the train step runs it), read back to the host.

Variants, timed interleaved (round robin) and reported as the minimum over rounds of the mean
over ``--calls`` calls, so that a busy machine penalizes all of them alike:
- ``ccp``: ``ccp.losses.CCPLoss(ContrastiveLoss(0, 0.5), ...)``, the library as it is;
- ``ccp_xla``: the same function compiled by XLA (``jit_compile=True``), as the Trainer runs
  the loss inside its step with ``Trainer(jit_compile=True)`` (the TPU path);
- ``previous``: the previous implementation, kept here as the baseline: the old
  ``tf.custom_gradient`` Lipschitz normalization (``tf.where`` between the projected and the
  identity gradient) and the C2 loss composed from ``ops.pairwise_distances`` /
  ``ops.pair_masks`` / ``losses.pair.contrastive``, once for the batch and once for the proxies;
- ``ccp_dense`` / ``previous_dense``: the same two on vectors all near one direction, so that
  every sample-vs-proxy negative pair is inside the margin (the fused loss's worst case: its
  dense negative backward runs; with the random vectors no negative pair is active, as in most
  training batches, and that part is skipped);
- ``lipschitz`` / ``lipschitz_previous``: the normalization of the 800 x 128 proxy bank alone;
- ``pml`` (when ``--baseline_python`` has torch + pytorch-metric-learning): the same loss with
  PML's ``ContrastiveLoss`` (``LpDistance`` on the Lipschitz-normalized vectors, batch term +
  ``ref_emb`` proxy term), torch limited to the same number of threads, in a subprocess.

Both wall time and process CPU time are reported (CPU time is steadier on a shared machine).

Usage:
  python benchmarks/ccp_loss.py                 # 2 threads, 30 rounds x 200 calls (PML x 10)
  python benchmarks/ccp_loss.py --rounds=5 --calls=50
"""
import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_BASELINE_PYTHON = os.path.join(REPO, "benchmarks", ".venv-baselines", "bin", "python")


def _problem(args, dense=False):
    """Seeded inputs shared by every variant: labels [B], embeddings [B, D], proxies [P, D].

    ``dense``: every vector near one direction, so that every sample-vs-proxy negative pair is
    inside C2's margin (the worst case of the fused loss, which skips the negative part of the
    backward pass when no negative pair is active, as with the random vectors).
    """
    rng = np.random.default_rng(args.seed)
    batch = args.classes_per_batch * args.samples_per_class
    classes = rng.choice(args.num_classes, args.classes_per_batch, replace=False)
    labels = np.repeat(classes, args.samples_per_class).astype(np.int32)
    # Raw embeddings of mixed norms (some inside the unit ball, most outside).
    embeddings = (rng.normal(size=(batch, args.dim)) * rng.uniform(0.05, 0.2, (batch, 1)))
    proxies = rng.normal(size=(args.num_classes * args.proxies_per_class, args.dim)) * 0.12
    if dense:
        direction = rng.normal(size=args.dim)
        direction /= np.linalg.norm(direction)
        embeddings = direction + 0.01 * rng.normal(size=embeddings.shape)
        proxies = direction + 0.01 * rng.normal(size=proxies.shape)
    proxy_labels = np.repeat(np.arange(args.num_classes), args.proxies_per_class).astype(np.int32)
    return labels, embeddings.astype(np.float32), proxies.astype(np.float32), proxy_labels


# ------------------------------------------------------------------ the previous implementation
def _previous_functions(tf):
    from ccp import ops
    from ccp.losses.pair import contrastive

    @tf.custom_gradient
    def lipschitz(x):
        norm = tf.norm(x, axis=-1, keepdims=True)
        scale = tf.maximum(norm, tf.ones_like(norm))
        u = x / scale

        def grad(dy):
            outside = norm > 1.0
            tangent = (dy - tf.reduce_sum(u * dy, axis=-1, keepdims=True) * u) / scale
            return tf.where(outside, tangent, dy)

        return u, grad

    def c2(x, labels, refs=None, ref_labels=None, pos_margin=0.0, neg_margin=0.5):
        dists = ops.pairwise_distances(x, refs)
        pos, neg = ops.pair_masks(labels, ref_labels)
        return contrastive(dists, pos, neg, pos_margin, neg_margin)

    def ccp_loss(labels, embeddings, proxies, proxy_labels, pair_weight=0.1, proxy_weight=1.0):
        x = lipschitz(embeddings)
        w = lipschitz(proxies)
        return pair_weight * c2(x, labels) + proxy_weight * c2(x, labels, w, proxy_labels)

    return lipschitz, ccp_loss


def _loss_functions(args, tf, losses, previous_ccp, dense):
    """``({"ccp", "ccp_xla", "previous"}: tf.function, bank)``: the value and the gradients
    w.r.t. the embeddings and the proxy bank ``bank``, on the (``dense``) problem; ``ccp_xla``
    is the library's function compiled by XLA."""
    labels, embeddings, proxies, proxy_labels = _problem(args, dense)
    layer = losses.CCPLoss(losses.ContrastiveLoss(0.0, 0.5), args.num_classes, args.dim,
                           proxies_per_class=args.proxies_per_class)
    layer.assign_proxies(proxies)
    labels_t, x_t = tf.constant(labels), tf.constant(embeddings)
    proxy_labels_t = tf.constant(proxy_labels)
    bank = layer.proxies

    def ours_body():
        with tf.GradientTape() as tape:
            tape.watch(x_t)
            loss = layer(labels_t, x_t)
        return (loss, *tape.gradient(loss, [x_t, bank]))

    @tf.function
    def previous():
        with tf.GradientTape() as tape:
            tape.watch(x_t)
            loss = previous_ccp(labels_t, x_t, tf.convert_to_tensor(bank), proxy_labels_t)
        return (loss, *tape.gradient(loss, [x_t, bank]))

    return {"ccp": tf.function(ours_body), "ccp_xla": tf.function(ours_body, jit_compile=True),
            "previous": previous}, bank


def _tf_variants(args):
    import tensorflow as tf

    from ccp import losses
    from ccp.layers import lipschitz_l2_normalize

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    previous_lipschitz, previous_ccp = _previous_functions(tf)
    functions, bank = _loss_functions(args, tf, losses, previous_ccp, dense=False)
    dense, _ = _loss_functions(args, tf, losses, previous_ccp, dense=True)
    cotangent = tf.constant(np.random.default_rng(1).normal(size=bank.shape), tf.float32)

    def lipschitz_of(fn):
        @tf.function
        def run():
            with tf.GradientTape() as tape:
                value = fn(tf.convert_to_tensor(bank))
            return value, tape.gradient(value, bank, output_gradients=cotangent)
        return run

    variants = {**functions, "ccp_dense": dense["ccp"], "previous_dense": dense["previous"],
                "lipschitz": lipschitz_of(lipschitz_l2_normalize),
                "lipschitz_previous": lipschitz_of(previous_lipschitz)}
    # Same numbers: the library's value and gradients equal the previous implementation's.
    for new_fn, old_fn in ((functions["ccp"], functions["previous"]),
                           (functions["ccp_xla"], functions["previous"]),
                           (dense["ccp"], dense["previous"])):
        for a, b in zip(new_fn(), old_fn()):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4,
                                       atol=1e-6 * max(1.0, float(np.abs(b.numpy()).max())))
    return {name: (lambda fn=fn: [t.numpy() for t in fn()]) for name, fn in variants.items()}


# ------------------------------------------------------------------ pytorch-metric-learning
def _pml_variant(args):
    import torch
    from pytorch_metric_learning import distances, losses

    torch.set_num_threads(args.threads)
    labels, embeddings, proxies, proxy_labels = _problem(args)
    loss_fn = losses.ContrastiveLoss(pos_margin=0.0, neg_margin=0.5,
                                     distance=distances.LpDistance(normalize_embeddings=False))
    y, yw = torch.as_tensor(labels, dtype=torch.long), torch.as_tensor(proxy_labels,
                                                                        dtype=torch.long)
    e = torch.tensor(embeddings, requires_grad=True)
    w = torch.tensor(proxies, requires_grad=True)

    def lipschitz(v):
        return v / v.norm(dim=1, keepdim=True).clamp(min=1.0)

    def run():
        e.grad, w.grad = None, None
        x, p = lipschitz(e), lipschitz(w)
        loss = 0.1 * loss_fn(x, y) + 1.0 * loss_fn(x, y, ref_emb=p, ref_labels=yw)
        loss.backward()
        return [loss.item(), e.grad.numpy(), w.grad.numpy()]

    return {"pml": run}


def _time_round_robin(variants, rounds, calls, warmup=10):
    """``{name: (wall ms, process CPU ms)}`` per call, each the minimum over the rounds."""
    for run in variants.values():
        for _ in range(warmup):
            run()
    wall = {name: float("inf") for name in variants}
    cpu = dict(wall)
    for _ in range(rounds):
        for name, run in variants.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            for _ in range(calls):
                run()
            wall[name] = min(wall[name], (time.perf_counter() - start) / calls * 1e3)
            cpu[name] = min(cpu[name], (time.process_time() - start_cpu) / calls * 1e3)
    return {name: (wall[name], cpu[name]) for name in variants}


def _pml_worker(args):
    print(json.dumps(_time_round_robin(_pml_variant(args), args.rounds, args.calls)))


def _spawn_pml(args):
    if not os.path.exists(args.baseline_python):
        return None, f"{args.baseline_python} not found"
    command = [args.baseline_python, os.path.abspath(__file__), "--worker=pml",
               f"--rounds={args.rounds}", f"--calls={args.pml_calls}",
               f"--threads={args.threads}",
               f"--seed={args.seed}", f"--dim={args.dim}", f"--num_classes={args.num_classes}",
               f"--proxies_per_class={args.proxies_per_class}",
               f"--classes_per_batch={args.classes_per_batch}",
               f"--samples_per_class={args.samples_per_class}"]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        return None, done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"
    return json.loads(done.stdout.strip().splitlines()[-1]), None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--pml_calls", type=int, default=10, help="calls per PML round")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--num_classes", type=int, default=100)
    parser.add_argument("--proxies_per_class", type=int, default=8)
    parser.add_argument("--classes_per_batch", type=int, default=8)
    parser.add_argument("--samples_per_class", type=int, default=4)
    parser.add_argument("--baseline_python", default=DEFAULT_BASELINE_PYTHON,
                        help="python with torch + pytorch-metric-learning ('' to skip)")
    parser.add_argument("--worker", choices=["pml"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker == "pml":
        _pml_worker(args)
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    batch = args.classes_per_batch * args.samples_per_class
    print(f"C2-CCP forward+backward: B={batch}, D={args.dim}, {args.num_classes} classes x "
          f"{args.proxies_per_class} proxies; {args.threads} threads on {os.cpu_count()} cores; "
          f"min over {args.rounds} interleaved rounds of {args.calls} calls")
    times = _time_round_robin(_tf_variants(args), args.rounds, args.calls)
    pml, why = _spawn_pml(args) if args.baseline_python else (None, "skipped")
    ours = times["ccp"]
    print("  per call, min over rounds:         wall ms   process CPU ms")

    def row(label, value, note=""):
        print(f"  {label:34s} {value[0]:7.3f}   {value[1]:7.3f}{note}")

    row("ccp (library)", ours)
    row("ccp, XLA (Trainer(jit_compile=True))", times["ccp_xla"])
    row("previous implementation", times["previous"],
        f"   ccp faster x{times['previous'][0] / ours[0]:.2f} wall, "
        f"x{times['previous'][1] / ours[1]:.2f} CPU")
    if pml is not None:
        row("pytorch-metric-learning", pml["pml"],
            f"   ccp faster x{pml['pml'][0] / ours[0]:.2f} wall, "
            f"x{pml['pml'][1] / ours[1]:.2f} CPU")
    else:
        print(f"  pytorch-metric-learning            (not run: {why})")
    row("ccp, every negative in the margin", times["ccp_dense"])
    row("  previous implementation, same", times["previous_dense"],
        f"   ccp faster x{times['previous_dense'][0] / times['ccp_dense'][0]:.2f} wall, "
        f"x{times['previous_dense'][1] / times['ccp_dense'][1]:.2f} CPU")
    bank = f"{args.num_classes * args.proxies_per_class} x {args.dim}"
    row(f"Lipschitz of the {bank} bank", times["lipschitz"])
    row("  previous Lipschitz", times["lipschitz_previous"],
        f"   x{times['lipschitz_previous'][0] / times['lipschitz'][0]:.2f} wall")

if __name__ == "__main__":
    main()
