"""Preparing a TFDS copy of a benchmark and reading it back as DatasetSplits."""
import os

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from data_pipelines import records as records_lib
from data_pipelines import tfrecords
from data_pipelines.tfds_builders import builders


def builder(name, data_dir=None, allow_partial=False):
    """The TFDS builder of benchmark `name` ("cub", "cars196", "sop", "inshop").

    Args:
      data_dir: the TFDS data folder (local or gs://); None = TFDS's default.
      allow_partial: the ``partial`` config (any subset) instead of ``full``.
    """
    if name not in builders.BUILDERS:
        raise ValueError(f"no TFDS builder for dataset {name!r}; valid names: "
                         f"{sorted(builders.BUILDERS)}")
    config = "partial" if allow_partial else "full"
    return tfds.builder(f"{builders.BUILDERS[name].name}/{config}", data_dir=data_dir)


def prepare(name, manual_dir, data_dir=None, allow_partial=False):
    """Writes the TFDS copy of `name` from the downloaded folder `manual_dir` (once).

    Returns:
      the prepared builder (``builder.as_dataset`` / ``tfds.load`` read it).
    """
    prepared = builder(name, data_dir, allow_partial)
    prepared.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir)))
    return prepared


def _split_records(info):
    """Records of one split: labels and file names read from its shards, plus their index."""
    files = [os.fspath(path) for path in info.filepaths]
    index = records_lib.TFRecordIndex(files, info.shard_lengths,
                                      np.arange(info.num_examples, dtype=np.int64))
    parsed = tfrecords.read_examples(files, info.shard_lengths, {
        tfrecords.LABEL: tf.io.FixedLenFeature([], tf.int64),
        tfrecords.FILE_NAME: tf.io.FixedLenFeature([], tf.string),
    })
    names = tuple(name.decode("utf-8") for name in parsed[tfrecords.FILE_NAME].numpy())
    return records_lib.Records(parsed[tfrecords.LABEL].numpy(), paths=names, tfrecords=index)


def load_prepared(name, data_dir=None, allow_partial=False):
    """DatasetSplits of `name` read from its prepared TFDS copy under `data_dir`.

    The records, labels and their order equal those of the file loader on the folder the copy
    was prepared from; `paths` are the original file names relative to the data set folder and
    the images are read from the copy's TFRecord shards (Records.tfrecords).

    Raises:
      FileNotFoundError: no prepared copy (names the folder and how to prepare one).
    """
    prepared = builder(name, data_dir, allow_partial)
    if not prepared.is_prepared():
        other = builder(name, data_dir, not allow_partial)
        if other.is_prepared() and not allow_partial:
            hint = (f"; the partial copy {other.name}/partial lies next to it (any subset of "
                    "the images): read it with allow_partial=True (the runner's --allow_partial)")
        elif other.is_prepared():
            hint = (f"; the full copy {other.name}/full lies next to it: read it with "
                    "allow_partial=False (without --allow_partial)")
        else:
            hint = ""
        raise FileNotFoundError(
            f"no prepared TFDS copy {prepared.name}/{prepared.builder_config.name} in "
            f"{prepared.data_dir}{hint}; or prepare it once with "
            f"data_pipelines.tfds_builders.prepare({name!r}, manual_dir=<downloaded folder>, "
            "data_dir=...) (or --data_source=files)")
    splits = {split: _split_records(info) for split, info in prepared.info.splits.items()}
    if name == "inshop":
        return records_lib.DatasetSplits(
            name=name, train=splits["train"],
            test=records_lib.concatenate(splits["query"], splits["gallery"]),
            query=splits["query"], gallery=splits["gallery"])
    return records_lib.DatasetSplits(name=name, train=splits["train"], test=splits["test"])
