"""One epoch's steps and one validation pass, as the Trainer runs them (eager shell)."""
import numpy as np
import tensorflow as tf

from ccp import metrics as metrics_lib
from ccp.training import embedding as embedding_lib
from ccp.training import health
from ccp.training.events import ProgressBar

__all__ = ["ProgressBar", "run_epoch", "validation_metrics"]


def run_epoch(step, iterator, steps_per_epoch, steps_per_execution, bar):
    """Runs ``steps_per_epoch`` train steps, ``steps_per_execution`` per device call.

    The host reads the device once per call (the step sums the loss terms on the device).

    Args:
      step: a :class:`ccp.training.TrainStep`.
      iterator: its distributed input iterator.
      steps_per_epoch, steps_per_execution: ints >= 1.
      bar: a :class:`ProgressBar` (closed on return).
    Returns:
      ``(means, None)``: the mean of each loss term over the epoch; or ``(None, terms)`` with
      the terms of the first non-finite step (the epoch stops there).
    Raises:
      ValueError: the input ended.
    """
    sums, done = {}, 0
    try:
        while done < steps_per_epoch:
            count = min(steps_per_execution, steps_per_epoch - done)
            try:
                call_sums, call_done, first_bad, last = step.run(iterator, count)
            except (tf.errors.OutOfRangeError, StopIteration) as error:
                raise ValueError("train_dataset_fn(start_step) must yield batches forever; it "
                                 "ended during an epoch") from error
            last = {k: float(v) for k, v in last.items()}
            if int(first_bad) >= 0:
                return None, last
            for key, value in call_sums.items():
                sums[key] = sums.get(key, 0.0) + float(value)
            done += int(call_done)
            bar.update(last, int(call_done))
    finally:
        bar.close()
    return {key: value / steps_per_epoch for key, value in sums.items()}, None


def validation_metrics(model, dataset, strategy, recall_at):
    """Retrieval metrics of ``model`` on a finite ``(images, labels)`` dataset, the query set
    being the reference set: dict of floats (``map_at_r``, ``r_precision``, ...), plus the
    ``embedding_spread`` of the embeddings (``ccp.training.health``)."""
    embeddings, labels = embedding_lib.embed_dataset(model, dataset, strategy=strategy)
    if labels is None:
        raise ValueError("validation data must yield (images, labels)")
    results = metrics_lib.retrieval_metrics(embeddings, labels, recall_at=recall_at)
    results = {k: float(v) for k, v in results.items()
               if isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool)}
    results["embedding_spread"] = health.embedding_spread(embeddings)
    return results
