"""Train-step cost of CCP and the projection time at SOP scale.

1. ms/step of the Trainer's train step for plain C2 and for C2-CCP (K proxies per class,
   ``--num_classes`` classes) on the same model and the same 8x4 batch; printed with their ratio
   (target: CCP / C2 <= 1.08).
2. The projection step at SOP scale (11,318 classes, b=7, K=4, D=128) excluding the forward
   passes that embed the pool: greedy k-center from the current best proxies, covering radii,
   proxy-distance figures and the assignment to the loss (target: < 1 s).

Usage:
  python benchmarks/train_step.py                       # small_cnn 64x64, 100 classes
  python benchmarks/train_step.py --backbone=bn_inception --image_size=227
  python benchmarks/train_step.py --steps_per_execution=8 --jit_compile  # issue 13 options
"""
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("backbone", "small_cnn",
                    "ccp.models backbone: small_cnn, bn_inception, resnet50.")
flags.DEFINE_integer("image_size", 64, "Input side.")
flags.DEFINE_integer("embedding_size", 128, "D.")
flags.DEFINE_integer("num_classes", 100, "Classes of the CCP proxy bank.")
flags.DEFINE_integer("proxies_per_class", 8, "K of the train-step benchmark.")
flags.DEFINE_integer("classes_per_batch", 8, "Classes per batch.")
flags.DEFINE_integer("samples_per_class", 4, "Images per class in a batch.")
flags.DEFINE_integer("warmup_steps", 10, "Untimed steps (tracing, autotuning).")
flags.DEFINE_integer("steps", 50, "Timed steps per repetition.")
flags.DEFINE_integer("repeats", 3, "Alternating timed repetitions of each variant (median kept).")
flags.DEFINE_string("precision", "float32", "Keras dtype policy (float32, mixed_float16, ...).")
flags.DEFINE_integer("steps_per_execution", 1, "Train steps per tf.function call.")
flags.DEFINE_bool("jit_compile", False, "XLA-compile the replica step.")
flags.DEFINE_bool("train_step", True, "Time the C2 vs C2-CCP train step.")
flags.DEFINE_bool("projection", True, "Time the SOP-scale projection.")
flags.DEFINE_integer("sop_classes", 11318, "Classes of the projection benchmark.")
flags.DEFINE_integer("sop_pool", 7, "b of the projection benchmark.")
flags.DEFINE_integer("sop_proxies", 4, "K of the projection benchmark.")


def _batch_dataset(tf, num_classes, batch_classes, per_class, image_size):
    """One fixed batch repeated: the same images and labels for both variants."""
    rng = tf.random.Generator.from_seed(0)
    images = rng.uniform([batch_classes * per_class, image_size, image_size, 3], 0, 255)
    labels = tf.repeat(tf.range(batch_classes, dtype=tf.int32) * (num_classes // batch_classes),
                       per_class)
    return tf.data.Dataset.from_tensors((images, labels)).repeat()


def _trainer(ccp, loss):
    model = ccp.models.build_embedding_model(
        backbone=FLAGS.backbone, embedding_size=FLAGS.embedding_size,
        image_size=FLAGS.image_size)
    optimization = ccp.training.build_optimization(model, loss, learning_rate=1e-5)
    return ccp.training.Trainer(model, loss, optimization, progress_bar=False,
                                steps_per_execution=FLAGS.steps_per_execution,
                                jit_compile=FLAGS.jit_compile)


def _time_steps(trainer, iterator, steps):
    """Seconds per step as the training loop runs it: ``--steps_per_execution`` steps per
    device call, then one read of the summed loss terms."""
    per_call = FLAGS.steps_per_execution
    calls = max(1, steps // per_call)
    started = time.perf_counter()
    for _ in range(calls):
        sums, _, _, _ = trainer.steps["train"].run(iterator, per_call)
        {k: float(v) for k, v in sums.items()}
    return (time.perf_counter() - started) / (calls * per_call)


def benchmark_train_step(tf, keras, ccp):
    keras.utils.set_random_seed(0)
    base = lambda: ccp.losses.ContrastiveLoss(pos_margin=0.0, neg_margin=0.3841)  # noqa: E731
    variants = {
        "C2": _trainer(ccp, base()),
        "C2-CCP": _trainer(ccp, ccp.losses.CCPLoss(
            base(), FLAGS.num_classes, FLAGS.embedding_size,
            proxies_per_class=FLAGS.proxies_per_class)),
    }
    dataset = _batch_dataset(tf, FLAGS.num_classes, FLAGS.classes_per_batch,
                             FLAGS.samples_per_class, FLAGS.image_size)
    iterators = {name: trainer.distribute(dataset) for name, trainer in variants.items()}
    for name, trainer in variants.items():
        _time_steps(trainer, iterators[name], FLAGS.warmup_steps)
    times = {name: [] for name in variants}
    for _ in range(FLAGS.repeats):  # alternate to share drifts (clocks, other load) fairly
        for name, trainer in variants.items():
            times[name].append(_time_steps(trainer, iterators[name], FLAGS.steps))
    medians = {name: statistics.median(values) * 1e3 for name, values in times.items()}
    batch = FLAGS.classes_per_batch * FLAGS.samples_per_class
    print(f"train step, backbone={FLAGS.backbone} {FLAGS.image_size}px, batch {batch}, "
          f"D={FLAGS.embedding_size}, precision={FLAGS.precision}, steps/call="
          f"{FLAGS.steps_per_execution}, jit_compile={FLAGS.jit_compile}, "
          f"device={'GPU' if tf.config.list_physical_devices('GPU') else 'CPU'}")
    for name, ms in medians.items():
        print(f"  {name:7s} {ms:8.2f} ms/step  (repetitions: "
              f"{', '.join(f'{t * 1e3:.2f}' for t in times[name])})")
    print(f"  ratio C2-CCP / C2 = {medians['C2-CCP'] / medians['C2']:.3f} (target <= 1.08; "
          f"C={FLAGS.num_classes}, K={FLAGS.proxies_per_class})")


def benchmark_projection(tf, ccp):
    num_classes, pool, per_class = FLAGS.sop_classes, FLAGS.sop_pool, FLAGS.sop_proxies
    size = FLAGS.embedding_size
    loss = ccp.losses.CCPLoss(ccp.losses.ContrastiveLoss(), num_classes, size,
                              proxies_per_class=per_class)
    weights = tf.Variable(tf.zeros([size, size]))
    schedule = ccp.projection.AlternatingProjection([weights], loss, pool_size=pool, patience=1)
    embeddings = tf.random.stateless_normal([num_classes, pool, size], [1, 2])
    pool_fn = lambda index: embeddings  # noqa: E731  (forward passes excluded)
    schedule.initialize_proxies(pool_fn)
    seconds = []
    for instance in range(5):
        schedule.on_epoch_end(1.0 + instance)  # new best: snapshot of weights and proxies
        started = time.perf_counter()
        decision = schedule.on_epoch_end(0.0, pool_fn)  # patience 1: the instance ends
        seconds.append(time.perf_counter() - started)
        assert decision.action == ccp.projection.PROJECT
    event = decision.event
    compiled = tf.function(lambda q, s: ccp.projection.greedy_k_center(q, s, per_class),
                           jit_compile=True)
    cover = loss.proxies_by_class()
    compiled(embeddings, cover).numpy()
    started = time.perf_counter()
    compiled(embeddings, cover).numpy()
    xla = time.perf_counter() - started
    print(f"projection at SOP scale (C={num_classes}, b={pool}, K={per_class}, D={size}), "
          f"forward passes excluded:")
    print(f"  full projection step (k-center + radii + assign): median "
          f"{statistics.median(seconds[1:]):.3f} s, first {seconds[0]:.3f} s (target < 1 s)")
    print(f"  greedy k-center alone, XLA-compiled: {xla * 1e3:.1f} ms; covering radius "
          f"{event['radius_before']:.3f} -> {event['radius_after']:.3f}")


def main(argv):
    del argv
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import ccp  # before TensorFlow: ccp.prefer_onednn
    import keras
    import tensorflow as tf

    keras.mixed_precision.set_global_policy(FLAGS.precision)
    if FLAGS.train_step:
        benchmark_train_step(tf, keras, ccp)
    if FLAGS.projection:
        keras.mixed_precision.set_global_policy("float32")
        benchmark_projection(tf, ccp)


if __name__ == "__main__":
    app.run(main)
