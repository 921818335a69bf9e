"""tf.data pipelines over Records: m-per-class training batches, evaluation, CCP proxy pool.

Images come from files (JPEG/PNG/GIF/BMP, grayscale to 3 channels; see augment.decode), from the
TFRecord shards of a prepared TFDS copy (Records.tfrecords: the encoded images of the records
are read into memory once with a parallel interleave over the shards, then decoded per step
exactly like files, so both sources give identical batches) or from in-memory uint8 arrays.
Training augmentation draws its randomness from the stateless seed
(seed, step * batch_size + position in batch), so a pipeline started at `start_step` reproduces
exactly the batches of an uninterrupted one.

Training batch indices come from one of INPUT_PIPELINES: "generator" (samplers.MPerClassSampler
in Python through from_generator) or "ingraph" (ingraph.py: tf.data/TF ops only, a documented
different sequence with the same guarantees; what a TPU host needs).

Corrupt files are found up front by images.find_corrupt_images (a full decode, skipped for files
the loader already decoded) that names them; a cheap signature / end-marker check runs in the
graph just before decoding (an Assert carrying the path), for files damaged after the pipeline
was built. A TFDS copy was checked when it was prepared.
"""
import weakref

from absl import logging
import numpy as np
import tensorflow as tf

from data_pipelines import augment
from data_pipelines import images as images_lib
from data_pipelines import ingraph
from data_pipelines import samplers
from data_pipelines import tfrecords

_CHECKED = weakref.WeakKeyDictionary()  # Records -> [(path, reason)] of its corrupt files

CorruptImageError = images_lib.CorruptImageError


def validate_images(records, skip_corrupt=False):
    """Checks every image file of `records` (signature and end marker; no decoding).

    Args:
      records: Records; in-memory and TFDS-backed records (checked when the copy was
        prepared) are returned unchanged.
      skip_corrupt: False raises on any bad file; True drops bad files and logs their count.
    Returns:
      Records without the bad files (`records` itself when all are fine).
    Raises:
      CorruptImageError naming the first bad files and their count (also when skipping would
      leave a class without images, which would change the class indices).
    """
    if records.paths is None or records.tfrecords is not None:
        return records
    if records not in _CHECKED:
        _CHECKED[records] = images_lib.find_corrupt_images(records)
    bad = _CHECKED[records]
    if not bad:
        return records
    if not skip_corrupt:
        raise CorruptImageError(images_lib.describe(bad) + "\n(pass skip_corrupt=True to skip "
                                                           "them)")
    bad_paths = {path for path, _ in bad}
    keep = np.array([i for i, p in enumerate(records.paths) if p not in bad_paths],
                    dtype=np.int64)
    lost = np.setdiff1d(records.classes, records.labels[keep])
    if lost.size:
        raise CorruptImageError(f"skipping the corrupt files would leave classes "
                                f"{lost[:10].tolist()} without images; "
                                + images_lib.describe(bad))
    logging.warning("skipping %s (of %d)", images_lib.describe(bad), len(records))
    return records.take(keep)


def _read_all(paths):
    """string [N] tensor of the files' bytes (the in-memory cache of encoded images)."""
    contents = []
    for path in paths:
        with open(path, "rb") as handle:
            contents.append(handle.read())
    return tf.constant(contents)


def _read_tfrecords(index):
    """string [N] tensor of the encoded images of TFRecordIndex `index` (one parallel pass)."""
    image = {tfrecords.IMAGE: tf.io.FixedLenFeature([], tf.string)}
    return tfrecords.read_examples(index.files, index.lengths, image,
                                   wanted=index.positions)[tfrecords.IMAGE]


def _encoded_loader(records, cache):
    """index int64 scalar -> (checked encoded image string scalar) for file/TFDS records."""
    paths = tf.constant(records.paths)
    if records.tfrecords is not None:
        contents, cache = _read_tfrecords(records.tfrecords), True
    else:
        contents = _read_all(records.paths) if cache else None

    def load(index):
        path = tf.gather(paths, index)
        data = tf.gather(contents, index) if cache else tf.io.read_file(path)
        with tf.control_dependencies(images_lib.check_encoded(data, path)):
            return tf.identity(data)

    return load


def _decoded_loader(records, cache=False):
    """index int64 scalar -> uint8 [H, W, 3] image."""
    if records.images is not None:
        array = tf.constant(records.images)
        return lambda index: tf.gather(array, index)
    load = _encoded_loader(records, cache)
    return lambda index: augment.decode(load(index))


def _positive(name, value):
    if int(value) < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def _generator_indices(labels, classes_per_batch, samples_per_class, seed, start_step):
    """(step, position, record index) stream of samplers.MPerClassSampler (Python generator)."""
    sampler = samplers.MPerClassSampler(labels, classes_per_batch, samples_per_class, seed)
    batch_size = sampler.batch_size

    def steps():
        for step, indices in enumerate(sampler.batches(start_step), start_step):
            yield np.int64(step), indices

    dataset = tf.data.Dataset.from_generator(steps, output_signature=(
        tf.TensorSpec([], tf.int64), tf.TensorSpec([batch_size], tf.int64)))
    return dataset.map(lambda step, indices: (
        tf.fill([batch_size], step), tf.range(batch_size, dtype=tf.int64), indices)).unbatch()


# input_pipeline name -> (labels, P, m, seed, start_step) -> Dataset of (step, position, index).
INPUT_PIPELINES = {
    "generator": _generator_indices,
    "ingraph": ingraph.image_indices,
}


def _pipeline_share(batch_size, input_context):
    """(first position, count) of the global batch that this input pipeline produces."""
    if input_context is None:
        return 0, batch_size
    pipelines = int(input_context.num_input_pipelines)
    if batch_size % pipelines:
        raise ValueError(f"the batch size {batch_size} is not divisible by the "
                         f"{pipelines} input pipelines of the distribution strategy")
    share = batch_size // pipelines
    return int(input_context.input_pipeline_id) * share, share


def train_dataset(records, classes_per_batch=8, samples_per_class=4, seed=0, start_step=0,
                  image_size=227, min_area=0.16, flip=True, cache=False, skip_corrupt=False,
                  input_pipeline="ingraph", input_context=None):
    """Infinite m-per-class training stream (SPEC §6), deterministic in (seed, step).

    Args:
      records: the training Records (paths, a TFDS copy or in-memory images).
      classes_per_batch, samples_per_class: P and m; batch size B = P * m.
      seed: int seed of the sampler and of the augmentation.
      start_step: first step produced; batch s equals batch s of a stream started at 0.
      image_size: S, output side; min_area: smallest crop area fraction; flip: random h-flip.
      cache: keep the encoded image files in memory (read once, here; TFDS copies always are).
      skip_corrupt: drop corrupt files (logged) instead of raising CorruptImageError.
      input_pipeline: a key of INPUT_PIPELINES: "ingraph" (the default: no Python in the
        graph; ingraph.py's sequence) or "generator" (the numpy sampler's sequence through
        from_generator; kept to reproduce runs made before the in-graph default).
      input_context: a tf.distribute.InputContext, or None. When given, this pipeline yields
        only its contiguous share of every global batch (B / num_input_pipelines examples,
        pipeline i the i-th share) and decodes only those images: use it inside
        `strategy.distribute_datasets_from_function`.
    Returns:
      tf.data.Dataset of (images float32 [B', S, S, 3], labels int32 [B']) with B' = B (or the
      share); labels are the contiguous class indices `records.class_indices()` of the
      (checked) records.
    """
    image_size = _positive("image_size", image_size)
    if not 0.0 < float(min_area) <= 1.0:
        raise ValueError(f"min_area must be in (0, 1], got {min_area}")
    if input_pipeline not in INPUT_PIPELINES:
        raise ValueError(f"unknown input_pipeline {input_pipeline!r}; expected one of "
                         f"{', '.join(sorted(INPUT_PIPELINES))}")
    batch_size = int(classes_per_batch) * int(samples_per_class)
    first, share = _pipeline_share(batch_size, input_context)
    records = validate_images(records, skip_corrupt)
    indices = INPUT_PIPELINES[input_pipeline](records.labels, classes_per_batch,
                                              samples_per_class, seed, int(start_step))
    if share != batch_size:
        indices = indices.filter(
            lambda step, position, index: (position >= first) & (position < first + share))
    class_indices = tf.constant(records.class_indices())
    min_area, flip = float(min_area), bool(flip)
    if records.images is not None:
        array = tf.constant(records.images)

        def transform(index, image_seed):
            return augment.train_transform(tf.gather(array, index), image_seed, image_size,
                                           min_area, flip)
    else:
        load = _encoded_loader(records, cache)

        def transform(index, image_seed):
            return augment.train_transform_encoded(load(index), image_seed, image_size,
                                                   min_area, flip)

    seed_value = tf.constant(int(seed), tf.int64)

    def example(step, position, index):
        image_seed = tf.stack([seed_value, step * batch_size + position])
        return transform(index, image_seed), tf.gather(class_indices, index)

    dataset = indices.map(example, num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.batch(share, drop_remainder=True)
    return dataset.prefetch(tf.data.AUTOTUNE)


def _ordered_dataset(records, indices, labels, batch_size, image_size, resize_size, cache,
                     transform=None):
    """``transform``: None (the evaluation transform) or ``(image, position int64) -> image``."""
    if records.tfrecords is not None:  # read only the records used (a proxy pool: a few per class)
        used, indices = np.unique(indices, return_inverse=True)
        records, indices = records.select(used), indices.reshape(-1).astype(np.int64)
    load = _decoded_loader(records)
    if transform is None:
        def transform(image, position):
            del position
            return augment.eval_transform(image, image_size, resize_size)
    positions = np.arange(len(indices), dtype=np.int64)
    dataset = tf.data.Dataset.from_tensor_slices((indices, labels, positions))
    dataset = dataset.map(
        lambda index, label, position: (transform(load(index), position), label),
        num_parallel_calls=tf.data.AUTOTUNE)
    if cache:
        dataset = dataset.cache()
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def eval_dataset(records, batch_size=128, image_size=227, resize_size=None, cache=False,
                 skip_corrupt=False):
    """Every record once, in order, with the evaluation transform (SPEC §6).

    Args:
      resize_size: shorter side before the center crop (default round(S * 256 / 227)).
      cache: keep the transformed images in memory after the first pass.
    Returns:
      tf.data.Dataset of (images float32 [<=batch_size, S, S, 3], labels int64 [<=batch_size])
      with the ORIGINAL labels; only the last batch may be smaller.
    """
    batch_size = _positive("batch_size", batch_size)
    image_size = _positive("image_size", image_size)
    records = validate_images(records, skip_corrupt)
    indices = np.arange(len(records), dtype=np.int64)
    return _ordered_dataset(records, indices, records.labels, batch_size, image_size,
                            resize_size, cache)


POOL_TRANSFORMS = ("train", "eval")


def one_per_class_dataset(records, rounds, batch_size=256, seed=0, image_size=227,
                          resize_size=None, skip_corrupt=False, transform="eval",
                          min_area=0.16, flip=True):
    """The CCP proxy pool (SPEC §5): `rounds` rounds of one fresh image per class.

    Concatenated over the data set, element r * C + c is an image of class index c drawn in
    round r (round-major, class-index order; see samplers.one_per_class_indices).

    Args:
      seed: int seed of the image choice and, with the training transform, of its crops and
        flips: the pool is a pure function of (records, rounds, seed, transform settings).
      transform: "eval" (resize + center crop) or "train" (the training random-resized crop
        with `min_area` and random flip `flip`, as the reference's pool; element p's
        randomness is the stateless seed (seed, p)).
    Returns:
      tf.data.Dataset of (images float32 [<=batch_size, S, S, 3], labels int32 [<=batch_size])
      with contiguous class indices; rounds * C images in all.
    """
    batch_size = _positive("batch_size", batch_size)
    image_size = _positive("image_size", image_size)
    if transform not in POOL_TRANSFORMS:
        raise ValueError(f"unknown pool transform {transform!r}; expected one of "
                         f"{', '.join(POOL_TRANSFORMS)}")
    if not 0.0 < float(min_area) <= 1.0:
        raise ValueError(f"min_area must be in (0, 1], got {min_area}")
    records = validate_images(records, skip_corrupt)
    table = samplers.one_per_class_indices(records.labels, rounds, seed)  # [rounds, C]
    labels = np.tile(np.arange(table.shape[1], dtype=np.int32), table.shape[0])
    augmentation = None
    if transform == "train":
        seed_value, min_area, flip = tf.constant(int(seed), tf.int64), float(min_area), bool(flip)

        def augmentation(image, position):
            return augment.train_transform(image, tf.stack([seed_value, position]), image_size,
                                           min_area, flip)
    return _ordered_dataset(records, table.reshape(-1).astype(np.int64), labels, batch_size,
                            image_size, resize_size, cache=False, transform=augmentation)
