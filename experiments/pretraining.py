"""A small_cnn backbone pretrained on `symbols` (no glyphs class): the runner's ImageNet analogue.

``--weights=symbols_pretrained`` (any backbone run with ``--backbone=small_cnn``) starts from
these weights. The paper fine-tunes an ImageNet-pretrained BN-Inception on CUB / Cars / SOP /
In-shop, whose classes ImageNet training never named; here the backbone is pretrained as a
classifier on the 762 `symbols` classes (data_pipelines/symbols.py: arrows, box drawing,
mathematical signs, Armenian, Georgian, ...; disjoint from both glyphs splits) and then
fine-tuned on glyphs' training classes like the paper's backbone on CUB's.

The recipe (``RECIPE``; every value enters the cache key): small_cnn (the runner's backbone and
input normalization, BatchNorm trained) -> global average pooling -> Dense(128) -> Dense(C)
softmax cross-entropy; batches of 64 classes x 2 images, glyphs' training augmentation (random
crops of >= 60 % of the area, no flips), Adam 2e-3 with a cosine decay to 0, ``steps`` steps.
Held-out accuracy is measured on new jitter draws of every class and face (``symbols.load(seed=
seed + 1)``). The weights of the backbone alone (``small_cnn`` sub-model, ``.weights.h5``) and a
JSON record (recipe, classes, accuracy, time) are cached in ``$CCP_CACHE_DIR/pretrained`` (or
``~/.cache/ccp/pretrained``); concurrent runners wait on a file lock instead of training twice.

  python experiments/pretraining.py            # pretrains (or reports the cached copy)
"""
import dataclasses
import fcntl
import json
import os
import pathlib
import sys
import time

if __package__ in (None, ""):
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import ccp  # noqa: E402  (before TensorFlow: oneDNN kernels)

import numpy as np  # noqa: E402
from ccp.models import small_cnn  # noqa: E402

WEIGHTS_NAME = "symbols_pretrained"


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Every setting of the pretraining (all enter the cache key)."""

    image_size: int = 32
    samples_per_face: int = 2
    classes_per_batch: int = 64
    samples_per_class: int = 2
    min_crop_area: float = 0.6
    learning_rate: float = 2e-3
    steps: int = 1500
    head_size: int = 128
    seed: int = 0


RECIPE = Recipe()


def cache_dir():
    from data_pipelines import glyphs

    return os.path.join(glyphs.cache_root(), "pretrained")


def _key(recipe):
    import keras
    import tensorflow as tf
    from data_pipelines import glyphs, symbols

    return glyphs.digest({"recipe": dataclasses.asdict(recipe),
                           "symbols": symbols.fingerprint(),
                           "widths": list(small_cnn.DEFAULT_WIDTHS),
                           "tensorflow": tf.__version__, "keras": keras.__version__})


def paths(recipe=RECIPE):
    """(weights file, record file) of `recipe` in the cache."""
    stem = os.path.join(cache_dir(), f"small_cnn_symbols_{_key(recipe)}")
    return stem + ".weights.h5", stem + ".json"


def _classifier(num_classes, recipe):
    import keras

    embedding = ccp.models.build_embedding_model(
        "small_cnn", embedding_size=recipe.head_size, weights=None, pooling="avg",
        freeze_batchnorm=False, image_size=recipe.image_size)
    logits = keras.layers.Dense(num_classes, name="symbols_logits")(embedding.output)
    return keras.Model(embedding.input, logits, name="symbols_classifier"), embedding


def _backbone(embedding_model):
    """The small_cnn sub-model (its default name) of an embedding model."""
    return embedding_model.get_layer("small_cnn")


def pretrain(recipe=RECIPE, log=print):
    """Trains the classifier of `recipe`; returns (backbone keras.Model, record dict)."""
    import keras
    import tensorflow as tf

    import data_pipelines
    from data_pipelines import symbols

    started = time.time()
    keras.utils.set_random_seed(recipe.seed)
    train = symbols.load(recipe.image_size, recipe.samples_per_face, recipe.seed)
    held_out = symbols.load(recipe.image_size, 1, recipe.seed + 1)
    records = data_pipelines.Records(train.labels, images=train.images)
    dataset = data_pipelines.train_dataset(
        records, recipe.classes_per_batch, recipe.samples_per_class, seed=recipe.seed,
        image_size=recipe.image_size, min_area=recipe.min_crop_area, flip=False,
        input_pipeline="ingraph").prefetch(2)
    model, embedding = _classifier(train.num_classes, recipe)
    schedule = keras.optimizers.schedules.CosineDecay(recipe.learning_rate, recipe.steps)
    model.compile(keras.optimizers.Adam(schedule),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    epochs = 10
    history = model.fit(dataset, epochs=epochs, steps_per_epoch=recipe.steps // epochs,
                        verbose=0)
    held_out_records = data_pipelines.Records(held_out.labels, images=held_out.images)
    predictions = model.predict(data_pipelines.eval_dataset(
        held_out_records, batch_size=512, image_size=recipe.image_size).map(lambda x, y: x),
        verbose=0)
    accuracy = float(np.mean(np.argmax(predictions, -1) == held_out.labels))
    record = {"recipe": dataclasses.asdict(recipe), "classes": train.num_classes,
              "training_images": int(len(train.labels)),
              "held_out_images": int(len(held_out.labels)),
              "train_accuracy_last_epoch": float(history.history["accuracy"][-1]),
              "held_out_accuracy": accuracy, "seconds": round(time.time() - started, 1),
              "tensorflow": tf.__version__}
    log(f"symbols pretraining: {train.num_classes} classes, {len(train.labels)} images, "
        f"{recipe.steps} steps, held-out accuracy {100 * accuracy:.2f} % "
        f"({record['seconds']:.0f} s)")
    return _backbone(embedding), record


def pretrained_weights(recipe=RECIPE, log=print):
    """The cached backbone weight file of `recipe`, pretrained first when missing.

    Returns:
      str path of a small_cnn ``.weights.h5`` (load with ``weights=path``).
    """
    from data_pipelines import glyphs

    weights_path, record_path = paths(recipe)
    if os.path.exists(weights_path) and os.path.exists(record_path):
        return weights_path
    os.makedirs(cache_dir(), exist_ok=True)
    with open(weights_path + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be pretraining the same recipe
        if not (os.path.exists(weights_path) and os.path.exists(record_path)):
            log(f"pretraining small_cnn on symbols (once; cached in {cache_dir()}) ...")
            backbone, record = pretrain(recipe, log)
            tmp = f"{weights_path}.{os.getpid()}.tmp.weights.h5"
            backbone.save_weights(tmp)
            os.replace(tmp, weights_path)
            def write_record(tmp):
                with open(tmp, "w") as handle:
                    json.dump(record, handle, indent=1)

            glyphs.atomic_write(record_path, write_record)  # last: the cache is complete
    return weights_path


def pretraining_record(recipe=RECIPE):
    """The JSON record of the cached pretraining of `recipe` (None when not cached)."""
    _, record_path = paths(recipe)
    if not os.path.exists(record_path):
        return None
    with open(record_path) as handle:
        return json.load(handle)


def main():
    path = pretrained_weights()
    print(path)
    print(json.dumps(pretraining_record(), indent=1))


if __name__ == "__main__":
    main()
