"""ccp's Trainer vs the ecosystem's own loop, ``keras.Model.fit``, on the same model and loss.

Both train benchmarks/identical_cnn.py's CNN on the same fixed 8 x 4 batch at 64 px with ccp's
C2 (0, 0.5) loss layer and Adam 1e-5 (no weight decay, no clipping). The fit side is a
``keras.Model`` whose ``train_step`` calls the same loss layer's ``loss_terms``; both are timed
at 1 and at ``--steps_per_execution`` steps per call (``compile(steps_per_execution=...)`` for
fit), XLA off on both sides (Keras' "auto" would compile fit's step). Timed repetitions
alternate between the variants within one run.

Usage:
  .venv/bin/python benchmarks/trainer_vs_fit.py [--steps=32 --repeats=5 --steps_per_execution=8]
"""
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from absl import app, flags  # noqa: E402

import identical_cnn as cnn  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("steps", 32, "Timed steps per repetition (a multiple of steps/call).")
flags.DEFINE_integer("warmup_steps", 8, "Untimed steps (tracing, autotuning).")
flags.DEFINE_integer("repeats", 5, "Alternating timed repetitions of each variant.")
flags.DEFINE_integer("threads", 2, "TensorFlow intra- and inter-op threads.")
flags.DEFINE_integer("steps_per_execution", 8, "The many-steps-per-call setting of both loops.")


def fit_model(keras, tf, ccp, steps_per_execution):
    """A keras.Model whose train_step is the same forward/loss/Adam update as the Trainer's."""

    class FitModel(keras.Model):
        def __init__(self, net, loss_layer):
            super().__init__()
            self.net, self.loss_layer = net, loss_layer

        def call(self, images, training=False):
            return self.net(images, training=training)

        def train_step(self, data):
            images, labels = data
            variables = self.net.trainable_variables
            with tf.GradientTape() as tape:
                embeddings = self.net(images, training=True)
                loss = self.loss_layer.loss_terms(labels, embeddings, training=True)["loss"]
            self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
            return {"loss": loss}

    model = FitModel(cnn.keras_cnn(keras, cnn.batchnorm_class(ccp, keras)), cnn.c2_loss(ccp))
    model.compile(optimizer=keras.optimizers.Adam(cnn.LEARNING_RATE),
                  steps_per_execution=steps_per_execution, jit_compile=False)
    return model


def time_fit(model, dataset, steps):
    """``(wall, cpu)`` seconds per step of one ``fit`` call of ``steps`` steps (set-up
    included)."""
    started, cpu = time.perf_counter(), time.process_time()
    model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False)
    return (time.perf_counter() - started) / steps, (time.process_time() - cpu) / steps


def main(argv):
    del argv
    import ccp  # before TensorFlow: ccp.prefer_onednn
    import keras
    import tensorflow as tf

    cnn.set_threads(tf, FLAGS.threads)
    dataset = cnn.dataset(tf)
    many = FLAGS.steps_per_execution
    runners = {}
    for per_call in sorted({1, many}):
        trainer = cnn.trainer(ccp, keras, per_call)
        iterator = trainer.distribute(dataset)
        runners[f"Trainer  x{per_call}"] = (
            lambda steps, t=trainer, it=iterator: cnn.time_trainer(t, it, steps))
        model = fit_model(keras, tf, ccp, per_call)
        runners[f"Model.fit x{per_call}"] = (
            lambda steps, m=model: time_fit(m, dataset, steps))
    for run in runners.values():
        run(FLAGS.warmup_steps)
    times = {name: [] for name in runners}
    for _ in range(FLAGS.repeats):
        for name, run in runners.items():
            times[name].append(run(FLAGS.steps))
    print(f"identical CNN, batch {cnn.CLASSES_PER_BATCH}x{cnn.SAMPLES_PER_CLASS} at "
          f"{cnn.IMAGE_SIZE}px, ccp C2 ({cnn.POS_MARGIN}, {cnn.NEG_MARGIN}), Adam "
          f"{cnn.LEARNING_RATE}, threads={FLAGS.threads}, "
          f"{cnn.tensorflow_setup(tf, cnn.batchnorm_class(ccp, keras))}, "
          f"Keras {keras.__version__}")
    for name, samples in times.items():
        print(cnn.report(name, samples))
    for per_call in sorted({1, many}):
        print(cnn.ratio(f"steps/call {per_call}, Trainer / Model.fit",
                        times[f"Trainer  x{per_call}"], times[f"Model.fit x{per_call}"]))


if __name__ == "__main__":
    app.run(main)
