"""Evaluation at scale: ccp.metrics.retrieval_metrics on SOP-test-sized embeddings vs a baseline.

Synthetic clustered embeddings with the shape of the Stanford Online Products test set (60,502
images of 11,316 classes with 2-12 images each; seeded) at 128 and 512 dimensions.  Every
(implementation, dimension) pair runs in its own subprocess so that each peak RSS (VmHWM, reset
right before the timed call through /proc/self/clear_refs) is measured separately.

Baseline, measured in the same run: pytorch-metric-learning's AccuracyCalculator (its default
faiss IndexFlatL2 kNN) when importable, otherwise an exact chunked numpy brute force (matmul,
then per query argpartition + stable argsort of the candidates, so ties keep the lower index).

    python benchmarks/eval_scale.py            # full SOP size, 128-D and 512-D
    python benchmarks/eval_scale.py --quick    # 1/10 of the size
    python benchmarks/eval_scale.py --baseline numpy --dims 128
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

SOP_TEST_IMAGES = 60502
SOP_TEST_CLASSES = 11316
METRIC_NAMES = ("precision_at_1", "r_precision", "map_at_r")
PML_NAMES = {
    "precision_at_1": "precision_at_1",
    "r_precision": "r_precision",
    "map_at_r": "mean_average_precision_at_r",
}


def make_dataset(num_images, num_classes, dim, seed=0):
    """Seeded SOP-like set: ``[num_images, dim]`` float32 embeddings, ``[num_images]`` labels.

    Class sizes lie in 2..12 and sum to ``num_images``; each image is its class center plus
    isotropic noise (more noise at higher ``dim``, so that MAP@R is moderate rather than
    saturated at both sizes), scaled so that norms straddle 1 (the Lipschitz normalization
    shortens some vectors and leaves the others).
    """
    if not 2 * num_classes <= num_images <= 12 * num_classes:
        raise ValueError("num_images must be between 2 and 12 times num_classes")
    rng = np.random.default_rng(seed)
    # Skewed class sizes like SOP's: 1 + geometric, clipped to 2..12, then nudged to the total.
    mean_size = num_images / num_classes
    sizes = np.clip(1 + rng.geometric(1.0 / (mean_size - 1.0), size=num_classes), 2, 12)
    while (gap := num_images - int(sizes.sum())) != 0:
        movable = np.flatnonzero(sizes < 12) if gap > 0 else np.flatnonzero(sizes > 2)
        step = rng.choice(movable, size=min(abs(gap), 64, len(movable)), replace=False)
        sizes[step] += 1 if gap > 0 else -1
    labels = rng.permutation(np.repeat(np.arange(num_classes), sizes))
    centers = rng.standard_normal((num_classes, dim), dtype=np.float32)
    noise_scale = np.float32(1.5 * (dim / 128) ** (1.0 / 3.0))
    x = rng.standard_normal((num_images, dim), dtype=np.float32)
    x *= noise_scale
    x += centers[labels]
    x *= np.float32(1.0 / np.sqrt(dim * (1.0 + noise_scale**2)))  # mean norm ~1
    return x, labels


def _peak_rss_bytes():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("VmHWM not found in /proc/self/status")


def _current_rss_bytes():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("VmRSS not found in /proc/self/status")


def _reset_peak_rss():
    """Resets VmHWM to the current RSS (Linux >= 4.0); returns False where that is refused."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _normalize(x):
    norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))
    return (x / np.maximum(norms, 1.0).astype(np.float32)[:, None]).astype(np.float32, copy=False)


def run_ours(x, labels):
    from ccp import metrics

    result = metrics.retrieval_metrics(x, labels)
    return {name: result[name] for name in METRIC_NAMES}


def run_pml(x, labels):
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    calculator = AccuracyCalculator(include=tuple(PML_NAMES.values()), k="max_bin_count")
    result = calculator.get_accuracy(_normalize(x), labels)
    return {name: float(result[pml_name]) for name, pml_name in PML_NAMES.items()}


def run_numpy(x, labels, chunk_size=512):
    """Exact brute force: per chunk a full ``[chunk, N]`` squared-distance block; per query
    the candidates up to the k-th smallest distance (all ties included), stably sorted."""
    x = _normalize(x)
    _, codes = np.unique(labels, return_inverse=True)
    num_relevant = np.bincount(codes)[codes] - 1
    k = int(num_relevant.max())
    sq_norms = np.einsum("ij,ij->i", x, x)
    totals = dict.fromkeys(METRIC_NAMES, 0.0)
    counted = 0
    for start in range(0, len(x), chunk_size):
        stop = min(start + chunk_size, len(x))
        block = sq_norms[start:stop, None] + sq_norms[None, :] - 2.0 * (x[start:stop] @ x.T)
        for row, i in zip(block, range(start, stop)):
            r = num_relevant[i]
            if r == 0:
                continue
            row[i] = np.inf
            kth = np.partition(row, k - 1)[k - 1]
            candidates = np.flatnonzero(row <= kth)
            order = candidates[np.argsort(row[candidates], kind="stable")][:r]
            rel = codes[order] == codes[i]
            hits = np.cumsum(rel)
            totals["precision_at_1"] += float(rel[0])
            totals["r_precision"] += hits[-1] / r
            totals["map_at_r"] += float(np.sum(rel * hits / np.arange(1, r + 1))) / r
            counted += 1
    return {name: value / counted for name, value in totals.items()}


RUNNERS = {"ours": run_ours, "pml": run_pml, "numpy": run_numpy}


def worker(args):
    x, labels = make_dataset(args.num_images, args.num_classes, args.dim, seed=args.seed)
    runner = RUNNERS[args.worker]
    if args.worker == "ours":
        import ccp.metrics  # noqa: F401  (import TF before the timed call, like the others)
    elif args.worker == "pml":
        import pytorch_metric_learning.utils.accuracy_calculator  # noqa: F401
    rss_before = _current_rss_bytes()
    reset = _reset_peak_rss()
    start = time.perf_counter()
    result = runner(x, labels)
    seconds = time.perf_counter() - start
    print(json.dumps({
        "seconds": seconds,
        "peak_rss": _peak_rss_bytes(),
        "rss_before": rss_before,
        "peak_reset": reset,
        "metrics": result,
    }))


def _spawn(kind, dim, args):
    command = [
        sys.executable, os.path.abspath(__file__), "--worker", kind, "--dim", str(dim),
        "--num-images", str(args.num_images), "--num-classes", str(args.num_classes),
        "--seed", str(args.seed),
    ]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [repo_root, env.get("PYTHONPATH")]))
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{kind} worker failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _pml_importable():
    try:
        import faiss  # noqa: F401
        import pytorch_metric_learning  # noqa: F401
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1/10 of the SOP test size")
    parser.add_argument("--dims", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--baseline", choices=["auto", "pml", "numpy"], default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-images", type=int, default=None)
    parser.add_argument("--num-classes", type=int, default=None)
    parser.add_argument("--worker", choices=sorted(RUNNERS), help=argparse.SUPPRESS)
    parser.add_argument("--dim", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.num_images is None:
        args.num_images = SOP_TEST_IMAGES // (10 if args.quick else 1)
    if args.num_classes is None:
        args.num_classes = SOP_TEST_CLASSES // (10 if args.quick else 1)
    if args.worker:
        worker(args)
        return

    baseline = args.baseline
    if baseline == "auto":
        baseline = "pml" if _pml_importable() else "numpy"
    baseline_name = {
        "pml": "pytorch-metric-learning AccuracyCalculator (faiss IndexFlatL2)",
        "numpy": "numpy chunked brute force (argpartition + stable argsort)",
    }[baseline]
    print(f"{args.num_images} images, {args.num_classes} classes (2-12 images each), seed "
          f"{args.seed}; {os.cpu_count()} CPU cores; baseline: {baseline_name}")
    mib = 2.0**20
    for dim in args.dims:
        ours = _spawn("ours", dim, args)
        theirs = _spawn(baseline, dim, args)
        diff = max(abs(ours["metrics"][n] - theirs["metrics"][n]) for n in METRIC_NAMES)
        print(f"\n{dim}-D")
        for name, measured in (("ccp.metrics", ours), (baseline, theirs)):
            values = ", ".join(f"{n} {measured['metrics'][n]:.6f}" for n in METRIC_NAMES)
            reset_note = "" if measured["peak_reset"] else " (peak not reset: includes setup)"
            print(f"  {name:12s} {measured['seconds']:8.2f} s   peak RSS "
                  f"{measured['peak_rss'] / mib:7.0f} MiB (RSS before call "
                  f"{measured['rss_before'] / mib:.0f} MiB){reset_note}   {values}")
        print(f"  speed ratio {baseline}/ccp.metrics: {theirs['seconds'] / ours['seconds']:.2f}x; "
              f"max |metric difference| {diff:.2e} "
              f"({'agree to 1e-5' if diff <= 1e-5 else 'DISAGREE beyond 1e-5'})")


if __name__ == "__main__":
    main()
