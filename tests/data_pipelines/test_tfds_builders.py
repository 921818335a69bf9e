"""TFDS builders: real copies of the four fixture folders, read back by tfds.load and load()."""
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

import data_pipelines
from data_pipelines import tfds_builders
from data_pipelines import tfrecords

# data set -> (fixture of conftest.py, data set folder inside it, TFDS splits)
CASES = {
    "cub": ("cub_dir", "CUB_200_2011", ("train", "test")),
    "cars196": ("cars_dir", "", ("train", "test")),
    "sop": ("sop_dir", "", ("train", "test")),
    "inshop": ("inshop_dir", "", ("train", "query", "gallery")),
}


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


def _eval_images(records):
    batches = data_pipelines.eval_dataset(records, batch_size=64, image_size=16)
    return np.concatenate([x.numpy() for x, _ in batches])


def _copy_bytes(records):
    """The encoded images the pipelines read for TFDS-backed `records`, in record order."""
    index = records.tfrecords
    parsed = tfrecords.read_examples(index.files, index.lengths, {
        tfrecords.IMAGE: tf.io.FixedLenFeature([], tf.string)}, wanted=index.positions)
    return parsed[tfrecords.IMAGE].numpy().tolist()


@pytest.mark.parametrize("name", sorted(CASES))
def test_copy_holds_the_raw_records_and_loads_like_them(name, request, tfds_dir):
    fixture, folder, splits = CASES[name]
    manual_dir = request.getfixturevalue(fixture)
    root = os.path.join(str(manual_dir), folder)
    builder = tfds_builders.prepare(name, manual_dir, tfds_dir, allow_partial=True)
    assert builder.name == tfds_builders.BUILDERS[name].name == f"ccp_{name}".replace(
        "ccp_cub", "ccp_cub200_2011")
    assert sorted(builder.info.splits) == sorted(splits)
    raw = data_pipelines.load(name, str(manual_dir), allow_partial=True)
    copy = data_pipelines.load(name, tfds_dir, data_source="tfds", allow_partial=True)

    for split in splits:
        expected = getattr(raw, split)
        # tfds.load as users call it: original bytes, labels and file names, in record order.
        examples = list(tfds.as_numpy(tfds.load(
            f"{builder.name}/partial", split=split, data_dir=tfds_dir,
            decoders={"image": tfds.decode.SkipDecoding()})))
        assert [int(e["label"]) for e in examples] == expected.labels.tolist()
        for example, path in zip(examples, expected.paths):
            assert os.path.join(root, example["file_name"].decode()) == path
            with open(path, "rb") as handle:
                assert example["image"] == handle.read()
    decoded = next(iter(tfds.as_numpy(tfds.load(f"{builder.name}/partial", split="train",
                                                data_dir=tfds_dir))))
    np.testing.assert_array_equal(
        decoded["image"],
        tf.io.decode_image(tf.io.read_file(raw.train.paths[0]), channels=3).numpy())

    for split in ("train", "test") + (("query", "gallery") if name == "inshop" else ()):
        want, got = getattr(raw, split), getattr(copy, split)
        np.testing.assert_array_equal(got.labels, want.labels)
        assert [os.path.join(root, p) for p in got.paths] == list(want.paths)
        assert got.tfrecords is not None and want.tfrecords is None
        file_bytes = []
        for path in want.paths:
            with open(path, "rb") as handle:
                file_bytes.append(handle.read())
        assert _copy_bytes(got) == file_bytes
    with pytest.raises(ValueError, match="cannot mix TFRecord-backed"):
        data_pipelines.concatenate(copy.train, raw.train)
    (want_fold, _), (got_fold, _) = (data_pipelines.class_folds(raw.train, num_folds=2),
                                     data_pipelines.class_folds(copy.train, num_folds=2))
    for part in ("train", "val"):
        np.testing.assert_array_equal(getattr(got_fold, part).labels,
                                      getattr(want_fold, part).labels)
    if name == "cub":  # the pipelines decode the copy like the files (train/pool: test_ingraph)
        np.testing.assert_array_equal(_eval_images(got_fold.val), _eval_images(want_fold.val))


def test_full_config_checks_the_published_sizes(cub_dir, tmp_path):
    with pytest.raises(data_pipelines.IncompleteDatasetError,
                       match=r"train images: expected 5,864, found 6"):
        tfds_builders.prepare("cub", cub_dir, str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"no prepared TFDS copy ccp_cub200_2011/full"):
        data_pipelines.load("cub", str(tmp_path), data_source="tfds")


def test_manual_dir_and_source_errors(tmp_path):
    with pytest.raises(AssertionError, match=r"(?s)does not exist.*Stanford_Online_Products"):
        tfds_builders.prepare("sop", tmp_path / "not_downloaded", str(tmp_path))
    with pytest.raises(ValueError, match="data_source"):
        data_pipelines.load("cub", str(tmp_path), data_source="tfrecord")
    with pytest.raises(ValueError, match="embedded"):
        data_pipelines.load("digits", None, data_source="tfds")


def test_read_examples_across_shards_in_any_order(tmp_path):
    files, lengths, number = [], [4, 1, 3], 0
    for shard, length in enumerate(lengths):
        files.append(str(tmp_path / f"shard-{shard}.tfrecord"))
        with tf.io.TFRecordWriter(files[-1]) as writer:
            for _ in range(length):
                writer.write(tf.train.Example(features=tf.train.Features(feature={
                    tfrecords.LABEL: tf.train.Feature(int64_list=tf.train.Int64List(
                        value=[100 + number]))})).SerializeToString())
                number += 1
    label = {tfrecords.LABEL: tf.io.FixedLenFeature([], tf.int64)}
    everything = tfrecords.read_examples(files, lengths, label)[tfrecords.LABEL].numpy()
    np.testing.assert_array_equal(everything, 100 + np.arange(8))
    wanted = [7, 0, 4, 7, 2]
    picked = tfrecords.read_examples(files, lengths, label, wanted)[tfrecords.LABEL].numpy()
    np.testing.assert_array_equal(picked, 100 + np.array(wanted))
    with pytest.raises(ValueError, match="incomplete"):
        tfrecords.read_examples(files, [4, 2, 3], label)
