"""Reading the TFRecord shards of a prepared TFDS copy with tf.data (no TFDS import needed).

The copies written by data_pipelines.tfds_builders hold one serialized ``tf.train.Example`` per
image with the keys below, in the loaders' record order (the builders disable TFDS shuffling).
:func:`read_examples` reads chosen features of chosen examples with a parallel, deterministic
interleave over the shards and returns them in example order.
"""
import numpy as np
import tensorflow as tf

IMAGE = "image"  # the image file's bytes, as downloaded (JPEG/PNG/...)
LABEL = "label"  # int64, the data set's original class id
FILE_NAME = "file_name"  # the image's path relative to the data set folder
READ_BATCH = 1024  # examples per host transfer while reading
MAX_CYCLE = 16  # shards read at once


def read_examples(files, lengths, features, wanted=None):
    """Features of the examples at positions `wanted` of the concatenated shards.

    Args:
      files: F TFRecord file paths (local or any tf.io.gfile file system, e.g. gs://).
      lengths: int [F], examples per file.
      features: {key: tf.io.FixedLenFeature} to parse (e.g. {IMAGE: FixedLenFeature([], string)}).
      wanted: int [M] example positions (any order, repeats allowed), or None for all.
    Returns:
      {key: eager tensor [M, ...]}, row i holding example `wanted[i]` (example order when None).
    Raises:
      ValueError: a file holds fewer examples than `lengths` says (an incomplete copy).
    """
    files = [str(f) for f in files]
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    keep = np.ones(total, dtype=bool)
    if wanted is not None:
        wanted = np.asarray(wanted, dtype=np.int64)
        keep[:] = False
        keep[wanted] = True
    keep_t = tf.constant(keep)

    def shard(path, start, count):
        examples = tf.data.TFRecordDataset(path)
        return tf.data.Dataset.zip(tf.data.Dataset.range(start, start + count), examples)

    dataset = tf.data.Dataset.from_tensor_slices((files, starts, lengths)).interleave(
        shard, cycle_length=max(1, min(len(files), MAX_CYCLE)), block_length=1,
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    dataset = dataset.filter(lambda position, _: tf.gather(keep_t, position))
    dataset = dataset.map(lambda position, payload: (
        position, tf.io.parse_single_example(payload, features)),
        num_parallel_calls=tf.data.AUTOTUNE)
    positions, parts = [], {key: [] for key in features}
    for position, parsed in dataset.batch(READ_BATCH):
        positions.append(position.numpy())
        for key in features:
            parts[key].append(parsed[key])
    found = np.concatenate(positions) if positions else np.zeros([0], np.int64)
    if found.size != int(keep.sum()):
        raise ValueError(
            f"TFRecord files {files[:3]}{'...' if len(files) > 3 else ''} hold fewer examples "
            f"than their split info says ({found.size} of {int(keep.sum())} wanted examples "
            "found); the copy is incomplete: prepare it again")
    order = np.argsort(found, kind="stable")
    rows = order if wanted is None else order[np.searchsorted(found[order], wanted)]
    values = {key: tf.concat(parts[key], axis=0) for key in features}
    if np.array_equal(rows, np.arange(rows.size)):  # already in order: no copy of the bytes
        return values
    return {key: tf.gather(value, rows) for key, value in values.items()}
