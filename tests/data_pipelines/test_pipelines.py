"""tf.data pipelines: shapes, label mapping, resume determinism, proxy pool order, bad files."""
import itertools
import logging

import numpy as np
import pytest
import tensorflow as tf

import data_pipelines
from data_pipelines import augment
from data_pipelines.records import Records
from data_pipelines.samplers import MPerClassSampler, one_per_class_indices

SIZE = 32


def _batches(dataset, count):
    return [(x.numpy(), y.numpy()) for x, y in dataset.take(count)]


def _decoded(path):
    return augment.decode(tf.io.read_file(path))


def test_train_batches_shapes_labels_and_sampler_order(jpeg_records):
    dataset = data_pipelines.train_dataset(jpeg_records, classes_per_batch=3, samples_per_class=2,
                                           seed=5, image_size=SIZE, input_pipeline="generator")
    assert dataset.element_spec[0].shape.as_list() == [6, SIZE, SIZE, 3]
    assert dataset.element_spec[1].dtype == tf.int32
    sampler = MPerClassSampler(jpeg_records.labels, 3, 2, seed=5)
    expected = itertools.islice(sampler.batches(), 4)
    for (images, labels), indices in zip(_batches(dataset, 4), expected):
        assert images.dtype == np.float32 and images.min() >= 0 and images.max() <= 255
        # Contiguous class indices of the sampled records (original ids are 10..15).
        np.testing.assert_array_equal(labels, jpeg_records.class_indices()[indices])
        assert labels.min() >= 0 and labels.max() <= 5


def test_train_resume_reproduces_images_exactly(jpeg_records):
    kwargs = dict(classes_per_batch=2, samples_per_class=2, seed=9, image_size=SIZE)
    full = _batches(data_pipelines.train_dataset(jpeg_records, **kwargs), 5)
    resumed = _batches(data_pipelines.train_dataset(jpeg_records, start_step=3, **kwargs), 2)
    for (x_full, y_full), (x_res, y_res) in zip(full[3:], resumed):
        np.testing.assert_array_equal(y_full, y_res)
        np.testing.assert_array_equal(x_full, x_res)
    cached = _batches(data_pipelines.train_dataset(jpeg_records, cache=True, **kwargs), 5)
    for (x_full, _), (x_cached, _) in zip(full, cached):
        np.testing.assert_array_equal(x_full, x_cached)
    other_seed = _batches(data_pipelines.train_dataset(
        jpeg_records, **{**kwargs, "seed": 10}), 1)
    assert not np.array_equal(other_seed[0][0], full[0][0])


def test_train_in_memory_and_argument_errors():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, 20, 20, 3), dtype=np.uint8)
    records = Records(labels=np.repeat([3, 8, 9], 4), images=images)
    sampler = MPerClassSampler(records.labels, 2, 2, seed=4)
    batches = _batches(data_pipelines.train_dataset(records, classes_per_batch=2,
                                                    samples_per_class=2, seed=4,
                                                    image_size=20, min_area=1.0, flip=False,
                                                    input_pipeline="generator"), 2)
    for (x, y), indices in zip(batches, sampler.batches()):
        np.testing.assert_array_equal(y, records.class_indices()[indices])
        # min_area=1, no flip: the whole image, resized to its own size, unchanged.
        np.testing.assert_allclose(x, images[indices].astype(np.float32), atol=1e-3)
    with pytest.raises(ValueError, match="input_pipeline"):
        data_pipelines.train_dataset(records, classes_per_batch=2, input_pipeline="python")
    with pytest.raises(ValueError, match="min_area"):
        data_pipelines.train_dataset(records, classes_per_batch=2, min_area=0.0)


def test_eval_dataset_order_labels_and_transform(jpeg_records):
    batches = _batches(data_pipelines.eval_dataset(jpeg_records, batch_size=7, image_size=SIZE),
                       100)
    assert [len(y) for _, y in batches] == [7, 7, 7, 7, 2]
    labels = np.concatenate([y for _, y in batches])
    np.testing.assert_array_equal(labels, jpeg_records.labels)  # original ids, in order
    images = np.concatenate([x for x, _ in batches])
    expected = augment.eval_transform(_decoded(jpeg_records.paths[8]), SIZE).numpy()
    np.testing.assert_allclose(images[8], expected, atol=1e-4)


def test_one_per_class_dataset_round_major(jpeg_records):
    rounds = 7  # > 5 images per class: the classes are reshuffled after exhaustion
    dataset = data_pipelines.one_per_class_dataset(jpeg_records, rounds=rounds, batch_size=16,
                                                   seed=3, image_size=SIZE)
    batches = _batches(dataset, 100)
    assert max(len(y) for _, y in batches) <= 16
    labels = np.concatenate([y for _, y in batches])
    images = np.concatenate([x for x, _ in batches])
    assert labels.dtype == np.int32 and len(labels) == rounds * 6
    np.testing.assert_array_equal(labels.reshape(rounds, 6), np.tile(np.arange(6), (rounds, 1)))
    table = one_per_class_indices(jpeg_records.labels, rounds, seed=3)
    for r, c in [(0, 0), (4, 5), (6, 2)]:
        path = jpeg_records.paths[table[r, c]]
        expected = augment.eval_transform(_decoded(path), SIZE).numpy()
        np.testing.assert_allclose(images[r * 6 + c], expected, atol=1e-4)


def _corrupt(records):
    """Copies of `records` with one garbage file and one truncated JPEG (2nd class keeps 3)."""
    garbage, truncated = records.paths[5], records.paths[6]
    with open(garbage, "wb") as handle:
        handle.write(b"<html>404 not found</html>")
    with open(truncated, "rb") as handle:
        data = handle.read()
    with open(truncated, "wb") as handle:
        handle.write(data[: len(data) // 2])
    return garbage, truncated


def test_corrupt_files_are_named_or_skipped(jpeg_records, caplog):
    garbage, truncated = _corrupt(jpeg_records)
    for make in (lambda r: data_pipelines.train_dataset(r, classes_per_batch=2, image_size=SIZE),
                 lambda r: data_pipelines.eval_dataset(r, image_size=SIZE),
                 lambda r: data_pipelines.one_per_class_dataset(r, rounds=1, image_size=SIZE)):
        with pytest.raises(data_pipelines.CorruptImageError) as error:
            make(jpeg_records)
        assert garbage in str(error.value) and truncated in str(error.value)
        assert "2 corrupt" in str(error.value)
    with caplog.at_level(logging.WARNING):
        dataset = data_pipelines.eval_dataset(jpeg_records, batch_size=64, image_size=SIZE,
                                              skip_corrupt=True)
    assert "2 corrupt" in caplog.text
    (_, labels), = _batches(dataset, 10)
    assert len(labels) == len(jpeg_records) - 2


def test_skipping_a_whole_class_is_refused(jpeg_records):
    for path in jpeg_records.paths[:5]:  # every image of class 10
        with open(path, "wb") as handle:
            handle.write(b"not an image")
    with pytest.raises(data_pipelines.CorruptImageError, match=r"classes \[10\]"):
        data_pipelines.train_dataset(jpeg_records, classes_per_batch=2, image_size=SIZE,
                                     skip_corrupt=True)


def test_file_corrupted_after_building_fails_naming_it(jpeg_records):
    dataset = data_pipelines.eval_dataset(jpeg_records, batch_size=4, image_size=SIZE)
    with open(jpeg_records.paths[2], "wb") as handle:
        handle.write(b"GIF? no")
    with pytest.raises(tf.errors.InvalidArgumentError, match=jpeg_records.paths[2]):
        _batches(dataset, 100)


def test_one_per_class_dataset_train_transform(jpeg_records):
    """The pool with the training transform (the reference's): element p of the pool is
    train_transform(image, seed (seed, p)); same seed -> same pool, other seed -> other pool."""
    def pool(seed, transform):
        dataset = data_pipelines.one_per_class_dataset(
            jpeg_records, rounds=2, batch_size=8, seed=seed, image_size=SIZE,
            transform=transform, min_area=0.3, flip=True)
        return np.concatenate([x for x, _ in _batches(dataset, 100)])

    first, again, other = pool(5, "train"), pool(5, "train"), pool(6, "train")
    evaluated = pool(5, "eval")
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)
    assert first.shape == evaluated.shape == (12, SIZE, SIZE, 3)
    assert all(not np.allclose(first[p], evaluated[p]) for p in range(12))
    table = one_per_class_indices(jpeg_records.labels, 2, seed=5)
    for r, c in [(0, 3), (1, 5)]:
        image = _decoded(jpeg_records.paths[table[r, c]])
        expected = augment.train_transform(image, tf.constant([5, r * 6 + c], tf.int64), SIZE,
                                           0.3, True).numpy()
        np.testing.assert_allclose(first[r * 6 + c], expected, atol=1e-4)
    with pytest.raises(ValueError, match="pool transform"):
        data_pipelines.one_per_class_dataset(jpeg_records, rounds=1, transform="test")
