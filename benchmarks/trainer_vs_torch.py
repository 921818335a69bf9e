"""ccp's Trainer vs PyTorch + pytorch-metric-learning on an identical small CNN (issue 13).

Both sides train benchmarks/identical_cnn.py's CNN (4 x [conv3x3 no-bias, BN, ReLU, maxpool 2],
widths 32-64-128-256, GAP, Dense 128) on the same fixed 8 x 4 batch at 64 px with C2 (0, 0.5)
on L2-normalized embeddings (PML: ContrastiveLoss(pos_margin=0, neg_margin=0.5), whose default
LpDistance normalizes) and Adam 1e-5, no weight decay, no clipping, each limited to
``--threads`` threads. Each side reads its loss on the host once per call (PyTorch: every
step; the Trainer: every ``--steps_per_execution`` steps).

PyTorch and PML are not ccp dependencies: they live in benchmarks/.venv-baselines (``make
baselines-venv``). This script runs the PyTorch side as a worker process of that environment
(this same file with ``--torch_worker``) and alternates timed repetitions of both sides in one
run, so machine load drifts hit both; without that environment it prints the ccp figure alone.

Usage:
  .venv/bin/python benchmarks/trainer_vs_torch.py [--steps=30 --repeats=5 --threads=2]
  .venv/bin/python benchmarks/trainer_vs_torch.py --steps_per_execution=8 --jit_compile
"""
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import identical_cnn as cnn  # noqa: E402

BASELINE_PYTHON = os.path.join(HERE, ".venv-baselines", "bin", "python")


# --- the PyTorch side (runs inside benchmarks/.venv-baselines; imports no TensorFlow) ----------
def torch_cnn(torch):
    """The CNN in PyTorch: ``[B, 3, 64, 64] -> [B, 128]``."""
    nn, layers, channels = torch.nn, [], 3
    for width in cnn.WIDTHS:
        layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False),
                   nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2)]
        channels = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, cnn.EMBEDDING_SIZE)]
    return nn.Sequential(*layers)


def torch_worker(threads):
    """Answers each stdin line ``N`` with the wall and CPU seconds per step of N PyTorch+PML
    steps."""
    import torch
    from pytorch_metric_learning import losses

    torch.set_num_threads(threads)
    torch.set_num_interop_threads(threads)
    torch.manual_seed(0)
    model = torch_cnn(torch).train()
    loss_fn = losses.ContrastiveLoss(pos_margin=cnn.POS_MARGIN, neg_margin=cnn.NEG_MARGIN)
    optimizer = torch.optim.Adam(model.parameters(), lr=cnn.LEARNING_RATE)
    images, labels = cnn.fixed_batch()
    images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    labels = torch.from_numpy(labels).long()
    print(f"ready torch {torch.__version__} threads={torch.get_num_threads()}", flush=True)
    for line in sys.stdin:
        steps = int(line)
        started, cpu = time.perf_counter(), time.process_time()
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(images), labels)
            loss.backward()
            optimizer.step()
            loss.item()
        print((time.perf_counter() - started) / steps, (time.process_time() - cpu) / steps,
              flush=True)


class TorchSide:
    """The worker process; ``seconds_per_step(n)`` times n steps there: ``(wall, cpu)``."""

    def __init__(self, threads):
        self.process = subprocess.Popen(
            [BASELINE_PYTHON, os.path.abspath(__file__), "--torch_worker", str(threads)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.banner = self.process.stdout.readline().strip()
        if not self.banner.startswith("ready"):
            raise RuntimeError(f"the PyTorch worker did not start ({BASELINE_PYTHON})")

    def seconds_per_step(self, steps):
        self.process.stdin.write(f"{steps}\n")
        self.process.stdin.flush()
        wall, cpu = self.process.stdout.readline().split()
        return float(wall), float(cpu)

    def close(self):
        self.process.stdin.close()
        self.process.wait(timeout=60)


def _has_baselines():
    if not os.path.exists(BASELINE_PYTHON):
        return False
    probe = subprocess.run([BASELINE_PYTHON, "-c", "import torch, pytorch_metric_learning"],
                           capture_output=True)
    return probe.returncode == 0


# --- the ccp side ----------------------------------------------------------------------------
def main(argv):
    del argv
    from absl import flags

    import ccp  # before TensorFlow: ccp.prefer_onednn
    import keras
    import tensorflow as tf

    FLAGS = flags.FLAGS
    cnn.set_threads(tf, FLAGS.threads, FLAGS.tf_inter_op_threads)
    batchnorm = cnn.batchnorm_class(ccp, keras, FLAGS.keras_batchnorm)
    trainer = cnn.trainer(ccp, keras, FLAGS.steps_per_execution, FLAGS.jit_compile, batchnorm)
    iterator = trainer.distribute(cnn.dataset(tf))
    torch_side = TorchSide(FLAGS.threads) if _has_baselines() else None
    cnn.time_trainer(trainer, iterator, FLAGS.warmup_steps)
    times = {"ccp Trainer": []}
    if torch_side is not None:
        torch_side.seconds_per_step(FLAGS.warmup_steps)
        times["PyTorch+PML"] = []
    for _ in range(FLAGS.repeats):  # alternating repetitions share the machine's load drifts
        times["ccp Trainer"].append(cnn.time_trainer(trainer, iterator, FLAGS.steps))
        if torch_side is not None:
            times["PyTorch+PML"].append(torch_side.seconds_per_step(FLAGS.steps))
    if torch_side is not None:
        torch_side.close()
    print(f"identical CNN, batch {cnn.CLASSES_PER_BATCH}x{cnn.SAMPLES_PER_CLASS} at "
          f"{cnn.IMAGE_SIZE}px, C2 ({cnn.POS_MARGIN}, {cnn.NEG_MARGIN}), Adam "
          f"{cnn.LEARNING_RATE}, threads={FLAGS.threads}, steps/call="
          f"{FLAGS.steps_per_execution}, jit_compile={FLAGS.jit_compile}, TF inter-op threads="
          f"{FLAGS.tf_inter_op_threads or FLAGS.threads}, "
          f"{cnn.tensorflow_setup(tf, batchnorm)}"
          + (f", {torch_side.banner[6:]}" if torch_side else ""))
    for name, samples in times.items():
        print(cnn.report(name, samples))
    if torch_side is None:
        print("  PyTorch+PML: not measured (no benchmarks/.venv-baselines with torch and "
              "pytorch-metric-learning; `make baselines-venv` creates it)")
        return
    print(cnn.ratio("ccp / PyTorch+PML", times["ccp Trainer"], times["PyTorch+PML"]))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--torch_worker":
        torch_worker(int(sys.argv[2]))
    else:
        from absl import app, flags

        flags.DEFINE_integer("steps", 30, "Timed steps per repetition.")
        flags.DEFINE_integer("warmup_steps", 8, "Untimed steps (tracing, autotuning).")
        flags.DEFINE_integer("repeats", 5, "Alternating timed repetitions of each side.")
        flags.DEFINE_integer("threads", 2, "Threads of each framework (intra- and inter-op).")
        flags.DEFINE_integer("tf_inter_op_threads", None, "TensorFlow inter-op threads (default "
                             "--threads): 1 runs a step's ops one after another, each on "
                             "--threads intra-op threads.")
        flags.DEFINE_integer("steps_per_execution", 1, "Trainer steps per tf.function call.")
        flags.DEFINE_bool("jit_compile", False, "XLA-compile the Trainer's replica step.")
        flags.DEFINE_bool("keras_batchnorm", False, "keras.layers.BatchNormalization instead "
                          "of ccp.layers.FusedBatchNormalization (same arithmetic, unfused).")
        app.run(main)
