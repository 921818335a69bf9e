"""The in-graph training pipeline: no Python in the graph, same batches from files and TFDS."""
import numpy as np
import pytest
import tensorflow as tf

import data_pipelines
from data_pipelines import augment
from data_pipelines import ingraph
from data_pipelines import tfds_builders

PYTHON_OPS = {"PyFunc", "PyFuncStateless", "EagerPyFunc", "GeneratorDataset"}
SIZE = 24


def _ops(dataset):
    """Every op type in the dataset's graph, its functions included."""
    graph = tf.compat.v1.GraphDef()
    graph.ParseFromString(dataset._as_serialized_graph().numpy())
    ops = {node.op for node in graph.node}
    for function in graph.library.function:
        ops |= {node.op for node in function.node_def}
    return ops


def _batches(dataset, count):
    return [(x.numpy(), y.numpy()) for x, y in dataset.take(count)]


def _train(records, pipeline="ingraph", **kwargs):
    return data_pipelines.train_dataset(records, classes_per_batch=3, samples_per_class=2,
                                        seed=4, image_size=SIZE, input_pipeline=pipeline,
                                        **kwargs)


def test_drop_in_without_python_ops_following_the_sampler_and_the_seed_rule(jpeg_records):
    dataset, generator = _train(jpeg_records), _train(jpeg_records, "generator")
    assert dataset.element_spec == generator.element_spec  # a drop-in for the trainer
    assert _ops(generator) & PYTHON_OPS  # the check can fail
    ops = _ops(dataset)
    assert not ops & PYTHON_OPS, sorted(ops & PYTHON_OPS)
    assert "ParallelMapDatasetV2" in ops
    indices = [i.numpy() for _, _, i in ingraph.image_indices(jpeg_records.labels, 3, 2, seed=4)
               .batch(6).take(3)]
    batches = _batches(dataset, 3)
    for step, ((images, labels), batch) in enumerate(zip(batches, indices)):
        np.testing.assert_array_equal(labels, jpeg_records.class_indices()[batch])
        for position in (0, 5):
            contents = tf.io.read_file(jpeg_records.paths[batch[position]])
            expected = augment.train_transform_encoded(
                contents, tf.constant([4, step * 6 + position], tf.int64), SIZE)
            np.testing.assert_array_equal(images[position], expected.numpy())
    resumed = _batches(_train(jpeg_records, start_step=2), 1)
    np.testing.assert_array_equal(resumed[0][0], batches[2][0])


def test_input_context_shares_concatenate_to_the_global_batch(jpeg_records):
    full = _batches(_train(jpeg_records), 2)
    shares = [_batches(_train(jpeg_records, input_context=tf.distribute.InputContext(
        num_input_pipelines=2, input_pipeline_id=i, num_replicas_in_sync=2)), 2)
        for i in range(2)]
    for step, (images, labels) in enumerate(full):
        assert shares[0][step][0].shape[0] == 3
        np.testing.assert_array_equal(np.concatenate([s[step][0] for s in shares]), images)
        np.testing.assert_array_equal(np.concatenate([s[step][1] for s in shares]), labels)
    with pytest.raises(ValueError, match="not divisible"):
        _train(jpeg_records, input_context=tf.distribute.InputContext(
            num_input_pipelines=4, input_pipeline_id=0, num_replicas_in_sync=4))


def test_tfds_copy_and_raw_files_give_identical_batches(cub_dir, tmp_path):
    tfds_builders.prepare("cub", cub_dir, str(tmp_path), allow_partial=True)
    copy = data_pipelines.load("cub", str(tmp_path), data_source="tfds", allow_partial=True)
    raw = data_pipelines.load("cub", str(cub_dir), allow_partial=True)
    kwargs = dict(classes_per_batch=2, samples_per_class=2, seed=1, image_size=SIZE,
                  input_pipeline="ingraph")
    from_copy = data_pipelines.train_dataset(copy.test, **kwargs)
    assert not _ops(from_copy) & PYTHON_OPS
    for (x_copy, y_copy), (x_raw, y_raw) in zip(
            _batches(from_copy, 3), _batches(data_pipelines.train_dataset(raw.test, **kwargs), 3)):
        np.testing.assert_array_equal(y_copy, y_raw)
        np.testing.assert_array_equal(x_copy, x_raw)
    pools = [_batches(data_pipelines.one_per_class_dataset(
        splits.test, rounds=4, batch_size=8, seed=3, image_size=SIZE), 1) for splits in (copy, raw)]
    np.testing.assert_array_equal(pools[0][0][0], pools[1][0][0])  # the CCP proxy pool too
