"""The small CNN of the issue-13 speed comparisons, built identically for every framework.

4 x [conv 3x3 (no bias), BatchNorm, ReLU, max-pool 2], widths 32-64-128-256, global average
pooling, Dense 128: images ``[B, S, S, 3]`` -> embeddings ``[B, 128]``. BatchNorm uses
PyTorch's defaults (momentum 0.1 = Keras 0.9, epsilon 1e-5) so both sides compute the same
thing. The batch is one fixed 8 classes x 4 images batch at 64 px (the same numbers on every
side: numpy seed 0), repeated.
"""
import os
import statistics
import time

import numpy as np

WIDTHS = (32, 64, 128, 256)
EMBEDDING_SIZE = 128
IMAGE_SIZE = 64
CLASSES_PER_BATCH, SAMPLES_PER_CLASS = 8, 4
POS_MARGIN, NEG_MARGIN = 0.0, 0.5  # C2 (0, 0.5)
LEARNING_RATE = 1e-5


def fixed_batch():
    """images float32 ``[32, 64, 64, 3]`` in [0, 1), labels int32 ``[32]`` (8 x 4)."""
    rng = np.random.default_rng(0)
    batch = CLASSES_PER_BATCH * SAMPLES_PER_CLASS
    images = rng.random((batch, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.float32)
    labels = np.repeat(np.arange(CLASSES_PER_BATCH, dtype=np.int32), SAMPLES_PER_CLASS)
    return images, labels


def keras_cnn(keras, batchnorm, seed=0):
    """The CNN as a functional Keras model: ``[B, 64, 64, 3] -> [B, 128]``.

    ``batchnorm``: the BatchNorm layer class, ``ccp.layers.FusedBatchNormalization`` (what
    ccp's models use) or ``keras.layers.BatchNormalization`` (same arithmetic, unfused ops).
    """
    keras.utils.set_random_seed(seed)
    layers = keras.layers
    inputs = keras.Input([IMAGE_SIZE, IMAGE_SIZE, 3])
    x = inputs
    for width in WIDTHS:
        x = layers.Conv2D(width, 3, padding="same", use_bias=False)(x)
        x = batchnorm(momentum=0.9, epsilon=1e-5)(x)
        x = layers.ReLU()(x)
        x = layers.MaxPooling2D(2)(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(EMBEDDING_SIZE)(x), name="identical_cnn")


def c2_loss(ccp):
    """ccp's C2 (0, 0.5) loss layer (L2-normalizes the embeddings itself)."""
    return ccp.losses.ContrastiveLoss(pos_margin=POS_MARGIN, neg_margin=NEG_MARGIN)


def batchnorm_class(ccp, keras, keras_batchnorm=False):
    """The runs' BatchNorm layer: ccp's fused one, or Keras' own with ``keras_batchnorm``."""
    if keras_batchnorm:
        return keras.layers.BatchNormalization
    return ccp.layers.FusedBatchNormalization


def trainer(ccp, keras, steps_per_execution=1, jit_compile=False, batchnorm=None):
    """ccp.training.Trainer on the CNN: C2 (0, 0.5), Adam 1e-5, no weight decay, no clipping;
    ``batchnorm``: the BatchNorm layer class (default: ``batchnorm_class``'s fused one)."""
    model = keras_cnn(keras, batchnorm or batchnorm_class(ccp, keras))
    loss = c2_loss(ccp)
    optimization = ccp.training.build_optimization(
        model, loss, learning_rate=LEARNING_RATE, weight_decay=0.0, clip_norm=0.0,
        clip_value=0.0)
    return ccp.training.Trainer(model, loss, optimization, progress_bar=False,
                                steps_per_execution=steps_per_execution,
                                jit_compile=jit_compile)


def dataset(tf):
    images, labels = fixed_batch()
    return tf.data.Dataset.from_tensors((images, labels)).repeat()


def time_trainer(trainer_, iterator, steps):
    """``(wall, cpu)`` seconds per step as Trainer.fit runs them: ``steps_per_execution``
    steps per call, one host read of the summed loss terms per call. ``cpu`` is this process's
    CPU time (all threads): less distorted than wall time on a loaded machine."""
    per_call = trainer_.steps_per_execution
    calls = max(1, steps // per_call)
    started, cpu = time.perf_counter(), time.process_time()
    for _ in range(calls):
        sums, _, _, _ = trainer_.steps["train"].run(iterator, per_call)
        {k: float(v) for k, v in sums.items()}
    done = calls * per_call
    return (time.perf_counter() - started) / done, (time.process_time() - cpu) / done


def report(name, samples):
    """One line: median wall and CPU ms/step of ``[(wall, cpu)]`` and each repetition."""
    wall = statistics.median(w for w, _ in samples) * 1e3
    cpu = statistics.median(c for _, c in samples) * 1e3
    reps = ", ".join(f"{w * 1e3:.0f}/{c * 1e3:.0f}" for w, c in samples)
    return f"  {name:14s} wall {wall:8.1f} ms/step, CPU {cpu:8.1f} ms/step  (wall/CPU: {reps})"


def ratio(name, ours, baseline):
    """Speed ratio ours / baseline (steps/s: baseline time / our time), wall and CPU, with the
    spread over the paired repetitions."""
    parts = []
    for index, kind in ((0, "wall"), (1, "CPU")):
        pairs = [b[index] / o[index] for o, b in zip(ours, baseline)]
        median = (statistics.median(b[index] for b in baseline)
                  / statistics.median(o[index] for o in ours))
        parts.append(f"{kind} {median:.3f} ({min(pairs):.3f}-{max(pairs):.3f})")
    return f"  {name}: speed ratio (steps/s) " + ", ".join(parts) + "; target >= 1.0"


def tensorflow_setup(tf, batchnorm):
    """One phrase for a report header: TF version, CPU kernels (oneDNN or Eigen) and the
    BatchNorm layer class ``batchnorm``."""
    onednn = os.environ.get("TF_ENABLE_ONEDNN_OPTS", "unset")
    package = batchnorm.__module__.split(".")[0]
    return f"TF {tf.__version__}, TF_ENABLE_ONEDNN_OPTS={onednn}, {package} {batchnorm.__name__}"


def set_threads(tf, threads, inter_op_threads=None):
    """Limits TensorFlow to ``threads`` intra-op threads and ``inter_op_threads`` (default
    ``threads``) inter-op threads, before any op runs."""
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(inter_op_threads or threads)
