"""One epoch's steps and one validation pass, as the Trainer runs them (eager shell)."""
import numpy as np
import tensorflow as tf

from ccp import metrics as metrics_lib
from ccp.training import embedding as embedding_lib
from ccp.training import health
from ccp.training.events import ProgressBar

__all__ = ["ProgressBar", "run_epoch", "validation_metrics"]


def run_epoch(step, iterator, steps_per_epoch, steps_per_execution, bar, breaks=(),
              at_break=None):
    """Runs ``steps_per_epoch`` train steps, ``steps_per_execution`` per device call.

    The host reads the device once per call (the step sums the loss terms on the device). A
    call never runs past a break: ``at_break(offset)`` runs on the host right after step
    ``offset`` of the epoch, before the next call (a CCP projection every N steps).

    Args:
      step: a :class:`ccp.training.TrainStep`.
      iterator: its distributed input iterator.
      steps_per_epoch, steps_per_execution: ints >= 1.
      bar: a :class:`ProgressBar` (closed on return).
      breaks: increasing 1-based step offsets in ``[1, steps_per_epoch]``.
      at_break: ``offset -> None``, called at each break (needed when there are breaks).
    Returns:
      ``(means, None)``: the mean of each loss term over the epoch; or ``(None, terms)`` with
      the terms of the first non-finite step (the epoch stops there).
    Raises:
      ValueError: the input ended.
    """
    breaks = [int(b) for b in breaks]
    if breaks and (breaks != sorted(set(breaks)) or breaks[0] < 1
                   or breaks[-1] > steps_per_epoch or at_break is None):
        raise ValueError(f"breaks must be increasing offsets in [1, {steps_per_epoch}] with an "
                         f"at_break function, got {breaks}")
    sums, done, pending = {}, 0, list(breaks)
    try:
        while done < steps_per_epoch:
            end = pending[0] if pending else steps_per_epoch
            count = min(steps_per_execution, end - done)
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
            if pending and done == pending[0]:
                at_break(pending.pop(0))
    finally:
        bar.close()
    return {key: value / steps_per_epoch for key, value in sums.items()}, None


def validation_metrics(model, dataset, strategy, recall_at, reference_dataset=None):
    """Retrieval metrics of ``model`` on a finite ``(images, labels)`` dataset: dict of floats
    (``map_at_r``, ``r_precision``, ...), plus the ``embedding_spread`` of the query embeddings
    (``ccp.training.health``). The Trainer's and ``ccp.callbacks.RetrievalEvaluation``'s pass.

    Args:
      model, dataset: the embedder and the queries.
      strategy: the ``tf.distribute.Strategy`` of the embedding pass (None: the current one).
      recall_at: ranks of Recall@K.
      reference_dataset: None (query set = reference set), or the reference set (a gallery).
    """
    embeddings, labels = embedding_lib.embed_dataset(model, dataset, strategy=strategy)
    if labels is None:
        raise ValueError("validation data must yield (images, labels)")
    reference = {}
    if reference_dataset is not None:
        ref_embeddings, ref_labels = embedding_lib.embed_dataset(model, reference_dataset,
                                                                 strategy=strategy)
        if ref_labels is None:
            raise ValueError("reference data must yield (images, labels)")
        reference = {"ref_embeddings": ref_embeddings, "ref_labels": ref_labels}
    results = metrics_lib.retrieval_metrics(embeddings, labels, recall_at=recall_at,
                                            **reference)
    results = {k: float(v) for k, v in results.items()
               if isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool)}
    results["embedding_spread"] = health.embedding_spread(embeddings)
    return results
