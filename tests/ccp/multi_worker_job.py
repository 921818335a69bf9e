"""One worker of the MultiWorkerMirroredStrategy test (run as a subprocess, not collected).

usage: python multi_worker_job.py OUT.npz [RUN_DIR]
(TF_CONFIG set by the caller, or unset = 1 process)
"""
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import ccp  # noqa: E402

CLASSES, PER_CLASS, FEATURES, DIM = 4, 4, 10, 6


def train_dataset_fn(start_step):
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(CLASSES, FEATURES))

    def batches():
        step = start_step
        while True:
            r = np.random.default_rng(step)
            labels = np.repeat(np.arange(CLASSES), PER_CLASS).astype(np.int32)
            images = (centers[labels] + r.normal(size=(len(labels), FEATURES))).astype(np.float32)
            yield images, labels
            step += 1

    spec = (tf.TensorSpec([CLASSES * PER_CLASS, FEATURES], tf.float32),
            tf.TensorSpec([CLASSES * PER_CLASS], tf.int32))
    # Every worker reads the same global batches; the trainer hands each worker its share.
    return tf.data.Dataset.from_generator(batches, output_signature=spec)


def main(out_path, run_dir=None):
    multi = "TF_CONFIG" in os.environ
    strategy = (tf.distribute.MultiWorkerMirroredStrategy() if multi
                else tf.distribute.get_strategy())
    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((FEATURES,)),
                                  keras.layers.Dense(12, activation="relu"),
                                  keras.layers.Dense(DIM, name="embedding")])
        loss = ccp.losses.CCPLoss(ccp.losses.ContrastiveLoss(0.0, 0.5), CLASSES, DIM,
                                  proxies_per_class=2, seed=1)
        optimization = ccp.training.build_optimization(model, loss, learning_rate=1e-2)
        trainer = ccp.training.Trainer(model, loss, optimization, strategy=strategy,
                                       steps_per_epoch=3, max_epochs=2, progress_bar=False,
                                       checkpoint_dir=run_dir and os.path.join(run_dir, "ckpt"),
                                       log_dir=run_dir and os.path.join(run_dir, "logs"))
    result = trainer.fit(train_dataset_fn)
    np.savez(out_path, *[np.asarray(v) for v in model.weights + loss.weights],
             losses=np.array([r["loss"] for r in result["history"]]),
             replicas=strategy.num_replicas_in_sync)


if __name__ == "__main__":
    main(*sys.argv[1:])
