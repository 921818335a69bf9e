"""Inference passes: embed a finite dataset with a model (validation, proxy pools, evaluation).

:func:`pool_embeddings` groups a pool dataset's embeddings by class: the ``[C, P, D]`` pool
of a CCP projection (``proxy_pool_fn`` of the Trainer, ``proxy_pool`` of the fit callback).
"""
import weakref

import numpy as np
import tensorflow as tf

_FORWARD_FNS = weakref.WeakKeyDictionary()


def _default_batch_fn(element):
    """``(images, labels[, ...])`` / ``{"image"|"images", "label"|"labels"}`` / ``images``."""
    if isinstance(element, dict):
        images = element.get("images", element.get("image"))
        labels = element.get("labels", element.get("label"))
        if images is None:
            raise ValueError(f"embed_dataset: dict elements need an 'image(s)' key, got "
                             f"{sorted(element)}")
        return images, labels
    if isinstance(element, (tuple, list)):
        return element[0], (element[1] if len(element) > 1 else None)
    return element, None


def _forward_fns(model):
    """Per-model cached tf.functions: single-device and replica forward passes."""
    fns = _FORWARD_FNS.get(model)
    if fns is None:
        def forward(images):
            return tf.cast(model(images, training=False), tf.float32)

        fns = {"local": tf.function(forward, reduce_retracing=True), "distributed": {}}
        _FORWARD_FNS[model] = fns
    return fns


def embed_dataset(model, dataset, batch_fn=None, strategy=None):
    """Embeds every element of a finite dataset in inference mode, keeping the dataset order.

    Under a non-default ``tf.distribute`` strategy (the active one unless ``strategy`` is given)
    each batch is split over the replicas and the per-replica results are concatenated back in
    order.

    Args:
      model: keras model, images ``[B, ...]`` -> embeddings ``[B, D]`` (raw).
      dataset: finite ``tf.data.Dataset`` of batches.
      batch_fn: optional ``element -> (images, labels_or_None)``; the default accepts
        ``(images, labels)``, ``(images,)``, ``images`` or a dict with image(s)/label(s) keys.
      strategy: a ``tf.distribute.Strategy`` (default: the current one).
    Returns:
      ``(embeddings, labels)``: float32 numpy ``[N, D]`` and numpy ``[N]`` (None when the
      dataset has no labels).
    Raises:
      ValueError: on an empty dataset.
    """
    batch_fn = batch_fn or _default_batch_fn
    strategy = strategy or tf.distribute.get_strategy()
    fns = _forward_fns(model)
    embeddings, labels = [], []
    # A single-replica strategy (default, OneDevice) can call the model directly; TPUs and
    # multi-replica strategies go through strategy.run.
    distributed = (strategy.num_replicas_in_sync > 1
                   or isinstance(strategy, tf.distribute.TPUStrategy))
    if not distributed:
        for element in dataset:
            images, batch_labels = batch_fn(element)
            embeddings.append(fns["local"](images).numpy())
            if batch_labels is not None:
                labels.append(np.reshape(np.asarray(batch_labels), [-1]))
    else:
        step = fns["distributed"].get(id(strategy))
        if step is None:
            def replica_forward(images, *maybe_labels):
                return (tf.cast(model(images, training=False), tf.float32),) + maybe_labels

            @tf.function(reduce_retracing=True)
            def step(element):
                return strategy.run(replica_forward, args=element)

            fns["distributed"][id(strategy)] = step

        def as_tuple(*element):
            images, batch_labels = batch_fn(element[0] if len(element) == 1 else element)
            return (images,) if batch_labels is None else (images, batch_labels)

        for element in strategy.experimental_distribute_dataset(dataset.map(as_tuple)):
            outputs = strategy.experimental_local_results(step(element))
            embeddings.append(np.concatenate([out[0].numpy() for out in outputs], axis=0))
            if len(outputs[0]) > 1:
                labels.append(np.concatenate(
                    [np.reshape(out[1].numpy(), [-1]) for out in outputs], axis=0))
    if not embeddings:
        raise ValueError("embed_dataset got an empty dataset")
    out_embeddings = np.concatenate(embeddings, axis=0).astype(np.float32, copy=False)
    out_labels = np.concatenate(labels, axis=0) if labels else None
    if out_labels is not None and len(out_labels) != len(out_embeddings):
        raise ValueError(f"embed_dataset: {len(out_embeddings)} embeddings but "
                         f"{len(out_labels)} labels")
    return out_embeddings, out_labels


def pool_embeddings(model, dataset, num_classes, per_class=None):
    """Raw pool embeddings ``[C, P, D]`` from a dataset of ``(images, labels)`` batches.

    Every element is embedded by ``model`` in inference mode; class ``c`` keeps its first ``P``
    samples in dataset order (a one-per-class stream such as
    ``data_pipelines.one_per_class_dataset`` gives each class ``P`` in turn).

    Args:
      model: ``images -> raw embeddings [B, D]``.
      dataset: finite ``tf.data.Dataset`` with labels in ``[0, num_classes)``.
      num_classes: ``C``.
      per_class: ``P``; None: the smallest class count.
    Raises:
      ValueError: a class with fewer than ``P`` samples, or a label out of range.
    """
    embeddings, labels = embed_dataset(model, dataset)
    if labels is None:
        raise ValueError("the proxy pool dataset must yield (images, labels)")
    labels = np.asarray(labels, np.int64)
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"proxy pool labels must lie in [0, {num_classes}), got "
                         f"[{labels.min()}, {labels.max()}]")
    counts = np.bincount(labels, minlength=num_classes)
    size = int(counts.min()) if per_class is None else int(per_class)
    short = np.flatnonzero(counts < max(size, 1))
    if short.size:
        raise ValueError(f"the proxy pool needs {max(size, 1)} samples of every class; class "
                         f"{int(short[0])} has {int(counts[short[0]])}")
    order = np.argsort(labels, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rows = order[starts[:, None] + np.arange(size)[None, :]]      # [C, P] in dataset order
    return embeddings[rows]
