"""Evaluation at scale: ccp.metrics.retrieval_metrics on SOP-test-sized embeddings vs a baseline.

Synthetic clustered embeddings with the shape of the Stanford Online Products test set (60,502
images of 11,316 classes with 2-12 images each; seeded) at 128 and 512 dimensions, written once
to .npy files that every worker loads.  Every (implementation, dimension) pair runs in its own
subprocess so that each peak RSS (VmHWM, reset right before the timed call through
/proc/self/clear_refs) is measured separately.

Baseline, measured in the same run: pytorch-metric-learning's AccuracyCalculator (its default
faiss IndexFlatL2 kNN).  torch, faiss-cpu and pytorch-metric-learning are not dependencies of
ccp: they live in their own virtual environment, benchmarks/.venv-baselines (`make
baselines-venv` creates it); the script runs the baseline workers with that environment's
python, or with the current one if it has them, and prints the ccp figures alone when neither
does.  `--baseline numpy` compares against an exact chunked numpy brute force instead.

`--large N` adds a bounded-memory run: N x 128 embeddings saved to a .npy file and evaluated
from the file's path (streamed in blocks, never loaded whole).

    python benchmarks/eval_scale.py                  # full SOP size, 128-D and 512-D
    python benchmarks/eval_scale.py --quick          # 1/10 of the size
    python benchmarks/eval_scale.py --dims 128 --large 250000
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

SOP_TEST_IMAGES = 60502
SOP_TEST_CLASSES = 11316
METRIC_NAMES = ("precision_at_1", "r_precision", "map_at_r")
BASELINE_VENV = os.path.join(os.path.dirname(os.path.abspath(__file__)), ".venv-baselines")
AGREEMENT = 1e-6  # largest metric difference accepted as "identical numbers"
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
    labels = np.load(args.labels)
    # The streamed run hands over the file's path; the others load the array first (untimed).
    x = args.data if args.worker == "ours-streamed" else np.load(args.data)
    if args.worker.startswith("ours"):
        import ccp.metrics  # noqa: F401  (import TF before the timed call, like the others)
    elif args.worker == "pml":
        import pytorch_metric_learning.utils.accuracy_calculator  # noqa: F401
    runner = RUNNERS["ours" if args.worker.startswith("ours") else args.worker]
    rss_before = _current_rss_bytes()
    reset = _reset_peak_rss()
    cpu_start = time.process_time()
    start = time.perf_counter()
    result = runner(x, labels)
    seconds = time.perf_counter() - start
    print(json.dumps({
        "seconds": seconds,
        "cpu_seconds": time.process_time() - cpu_start,
        "peak_rss": _peak_rss_bytes(),
        "rss_before": rss_before,
        "peak_reset": reset,
        "metrics": result,
    }))


def _spawn(kind, data_path, labels_path, python=None):
    command = [python or sys.executable, os.path.abspath(__file__), "--worker", kind,
               "--data", data_path, "--labels", labels_path]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [repo_root, env.get("PYTHONPATH")]))
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{kind} worker failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _pml_python():
    """A python that imports torch, faiss and pytorch-metric-learning (the baseline venv's
    first, then the current one), or None."""
    for python in (os.path.join(BASELINE_VENV, "bin", "python"), sys.executable):
        if os.path.exists(python) and subprocess.run(
                [python, "-c", "import faiss, torch, pytorch_metric_learning"],
                capture_output=True).returncode == 0:
            return python
    return None


def _print_row(name, measured):
    mib = 2.0**20
    values = ", ".join(f"{n} {measured['metrics'][n]:.6f}" for n in METRIC_NAMES)
    reset_note = "" if measured["peak_reset"] else " (peak not reset: includes setup)"
    cpu = measured.get("cpu_seconds")
    cpu_note = "" if cpu is None else f" (CPU {cpu:.1f} s, all threads)"
    print(f"  {name:12s} {measured['seconds']:8.2f} s{cpu_note}   peak RSS "
          f"{measured['peak_rss'] / mib:7.0f} MiB (RSS before call "
          f"{measured['rss_before'] / mib:.0f} MiB){reset_note}   {values}", flush=True)


def _save(directory, name, x, labels):
    data, label_path = os.path.join(directory, f"{name}.npy"), os.path.join(
        directory, f"{name}-labels.npy")
    np.save(data, x)
    np.save(label_path, labels)
    return data, label_path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1/10 of the SOP test size")
    parser.add_argument("--dims", type=int, nargs="*", default=[128, 512])
    parser.add_argument("--baseline", choices=["auto", "pml", "numpy", "none"], default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-images", type=int, default=None)
    parser.add_argument("--num-classes", type=int, default=None)
    parser.add_argument("--large", type=int, nargs="?", const=250000, default=None,
                        help="also evaluate LARGE x 128 embeddings streamed from a .npy path")
    parser.add_argument("--worker", choices=["ours", "ours-streamed", *RUNNERS],
                        help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--labels", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return
    if args.num_images is None:
        args.num_images = SOP_TEST_IMAGES // (10 if args.quick else 1)
    if args.num_classes is None:
        args.num_classes = SOP_TEST_CLASSES // (10 if args.quick else 1)

    baseline, python = args.baseline, None
    if baseline in ("auto", "pml"):
        python = _pml_python()
        if python is None and baseline == "pml":
            parser.error("--baseline pml: no python with torch, faiss and pytorch-metric-learning "
                         f"(create {BASELINE_VENV} with `make baselines-venv`)")
        baseline = "pml" if python else "none"
    baseline_name = {
        "pml": f"pytorch-metric-learning AccuracyCalculator (faiss IndexFlatL2), {python}",
        "numpy": "numpy chunked brute force (argpartition + stable argsort)",
        "none": "none" if args.baseline == "none" else (
            "none (no python with torch + faiss + pytorch-metric-learning; "
            "`make baselines-venv` creates one)"),
    }[baseline]
    print(f"{args.num_images} images, {args.num_classes} classes (2-12 images each), seed "
          f"{args.seed}; {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f}; "
          f"baseline: {baseline_name}", flush=True)
    ratios = {}
    with tempfile.TemporaryDirectory(prefix="eval_scale_") as directory:
        for dim in args.dims:
            x, labels = make_dataset(args.num_images, args.num_classes, dim, seed=args.seed)
            paths = _save(directory, f"sop{dim}", x, labels)
            del x
            print(f"\n{dim}-D", flush=True)
            ours = _spawn("ours", *paths)
            _print_row("ccp.metrics", ours)
            if baseline == "none":
                continue
            theirs = _spawn(baseline, *paths, python=python)
            _print_row(baseline, theirs)
            diff = max(abs(ours["metrics"][n] - theirs["metrics"][n]) for n in METRIC_NAMES)
            ratios[dim] = theirs["seconds"] / ours["seconds"]
            print(f"  speed ratio {baseline}/ccp.metrics: {ratios[dim]:.2f}x; "
                  f"max |metric difference| {diff:.2e} "
                  f"({'identical to 1e-6' if diff <= AGREEMENT else 'DISAGREE beyond 1e-6'}); "
                  f"load average now {os.getloadavg()[0]:.1f}", flush=True)
        if args.large:
            classes = args.large * SOP_TEST_CLASSES // SOP_TEST_IMAGES
            x, labels = make_dataset(args.large, classes, 128, seed=args.seed)
            paths = _save(directory, "large", x, labels)
            del x
            print(f"\n{args.large} x 128 ({classes} classes), streamed from a .npy path",
                  flush=True)
            _print_row("ccp.metrics", _spawn("ours-streamed", *paths))


if __name__ == "__main__":
    main()
