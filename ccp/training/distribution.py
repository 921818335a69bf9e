"""Batch distribution: how global batches reach the replicas, and which worker this process is."""
import tensorflow as tf


def distribute(strategy, dataset):
    """An iterator over ``dataset`` (global batches) distributed with ``strategy``.

    Each input pipeline (one per worker) takes its contiguous share of every global batch and
    hands consecutive per-replica slices to its replicas, so with any number of workers the
    all-gathered batch in the replica step is exactly the global batch, in order. (Auto
    sharding would instead give the workers different batches or the same half twice.)

    Args:
      strategy: a ``tf.distribute.Strategy``.
      dataset: ``tf.data.Dataset`` of ``(images [B, ...], labels [B])`` global batches.
    Returns:
      a distributed iterator yielding per-replica ``(images [B/R, ...], labels [B/R])``.
    """
    batch_size = dataset.element_spec[0].shape[0]
    replicas = strategy.num_replicas_in_sync
    if batch_size is None or replicas == 1:
        return iter(strategy.experimental_distribute_dataset(dataset))
    if batch_size % replicas:
        raise ValueError(f"the global batch size {batch_size} is not divisible by the "
                         f"{replicas} replicas of the distribution strategy")
    per_replica = batch_size // replicas

    def dataset_fn(context):
        per_pipeline = batch_size // context.num_input_pipelines
        start = context.input_pipeline_id * per_pipeline

        def share(*batch):
            return tuple(part[start:start + per_pipeline] for part in batch)

        return dataset.map(share).unbatch().batch(per_replica, drop_remainder=True)

    return iter(strategy.distribute_datasets_from_function(dataset_fn))


def single_batch(strategy, images, labels):
    """One global batch ``(images [B, ...], labels [B])`` split over the replicas like
    :func:`distribute` splits it: the per-replica values of that batch."""
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(len(labels))
    return next(distribute(strategy, dataset))


def worker_role(strategy):
    """``(is_chief, name)`` of this process in a multi-worker cluster (chief for one process)."""
    resolver = strategy.cluster_resolver  # None outside multi-worker and TPU strategies
    jobs = resolver.cluster_spec().as_dict() if resolver is not None else {}
    if not jobs or resolver.task_type is None:
        return True, "chief"
    task_type, task_id = resolver.task_type, int(resolver.task_id or 0)
    chief = task_type == "chief" or (task_type == "worker" and task_id == 0 and "chief" not in jobs)
    return chief, f"{task_type}_{task_id}"
