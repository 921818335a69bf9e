"""Keras callbacks for ``model.fit``: retrieval validation and CCP's alternating projection.

- :class:`RetrievalEvaluation`: the validation retrieval metrics (SPEC §6: MAP@R, R-precision,
  P@1, Recall@K) of the model's embeddings after every epoch, put into ``logs`` as
  ``val_map_at_r``, ``val_r_precision``, ``val_precision_at_1``, ``val_recall_at_<k>``, so
  Keras' own ``EarlyStopping``, ``ModelCheckpoint``, ``ReduceLROnPlateau`` and ``TensorBoard``
  use them (``monitor="val_map_at_r", mode="max"``).
- :class:`AlternatingProjectionCallback`: CCP's schedule (SPEC §5) on the fit path: the model's
  :class:`ccp.projection.AlternatingProjection` (the same object the Trainer drives)
  initializes the proxies before training, follows its monitor at every epoch end and
  projects (anchor, ``lambda_t``, proxies rebuilt by greedy k-center from a pool the user
  passes). The proximal term is applied in the step by the optimizer
  (:class:`ccp.training.ReferenceAdam`, attached by :class:`ccp.models.MetricModel`).

Order matters: Keras runs callbacks in list order at each epoch end. Put
:class:`RetrievalEvaluation` first, then :class:`AlternatingProjectionCallback`, then the
callbacks that read the metrics, and ``keras.callbacks.BackupAndRestore`` last, so that its
backup holds the epoch's projection decisions. (The projection initializes the proxies at the
first batch, after every callback's ``on_train_begin``: after BackupAndRestore restored a
resumed run's model, proxies and CCP state.)
"""
import keras
import tensorflow as tf
from absl import logging

from ccp import defaults
from ccp.projection import kcenter
from ccp.training import embedding as embedding_lib
from ccp.training import epoch as epoch_lib
from ccp.training import health


class RetrievalEvaluation(keras.callbacks.Callback):
    """Validation retrieval metrics into the epoch's ``logs``.

    Args:
      validation_data: finite ``tf.data.Dataset`` of ``(images, labels)`` batches: the queries
        (and the reference set, unless ``reference_data`` is given).
      reference_data: None (query set = reference set, each query's own image left out), or
        the reference set (e.g. In-shop's gallery), a dataset like ``validation_data``.
      recall_at: ranks of the Recall@K entries.
      embedder: the model that embeds (``images -> [B, D]``); default the fitted model.
      prefix: prefix of the logged names ("val_").
    """

    def __init__(self, validation_data, reference_data=None, recall_at=defaults.RECALL_AT,
                 embedder=None, prefix="val_"):
        super().__init__()
        self.validation_data = validation_data
        self.reference_data = reference_data
        self.recall_at = tuple(int(k) for k in recall_at)
        self.embedder = embedder
        self.prefix = str(prefix)

    def evaluate(self):
        """``{name: float}``: map_at_r, r_precision, precision_at_1, recall_at_<k>, ..., and
        ``embedding_spread`` (:func:`ccp.training.health.embedding_spread`, of the queries)."""
        return epoch_lib.validation_metrics(self.embedder or self.model, self.validation_data,
                                            None, self.recall_at, self.reference_data)

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        logs.update({f"{self.prefix}{k}": v for k, v in self.evaluate().items()})


class AlternatingProjectionCallback(keras.callbacks.Callback):
    """CCP's alternating projection (SPEC §5) on ``model.fit``.

    The fitted model is a :class:`ccp.models.MetricModel` built with the projection
    (``MetricModel(embedder, loss, projection=AlternatingProjection(...))``) and compiled with
    :class:`ccp.training.ReferenceAdam` (the proximal term). This callback runs the schedule:

    - before the first step, the initial proxies (greedy k-center from pool 0; nothing on a
      resume);
    - at every epoch end, ``projection.on_epoch_end(value)`` with the value of the
      projection's ``monitor`` from ``logs`` (``"val_" + monitor``, or ``"loss"``): new best
      snapshots, or a projection (``w_prev`` <- best, ``lambda_t``, proxies rebuilt from pool
      ``t``); ``logs`` gain ``ccp_instance`` and ``ccp_lambda_t``, and :attr:`last_decision`
      holds the :class:`ccp.projection.ScheduleDecision`;
    - a collapsed model (coinciding validation embeddings: ``val_embedding_spread`` of
      :class:`RetrievalEvaluation`) stops training with
      ``ccp.training.health.TrainingCollapsed`` before its pool reaches the projection (add
      ``keras.callbacks.TerminateOnNaN()`` for non-finite losses);
    - with ``projection_every_steps=N``, a projection after every N optimizer steps (counted by
      the optimizer's checkpointed ``iterations``; compile with ``steps_per_execution=1`` so
      batch ends fall on every step).

    Exactly one source of pools:
      proxy_pool: ``projection_index -> tf.data.Dataset`` of ``(images, labels)`` (``P``
        samples of every class, e.g. ``data_pipelines.one_per_class_dataset(..., seed=t)``;
        a pure function of the index makes a resumed run draw the same pools), or one
        ``tf.data.Dataset`` re-iterated at each projection.
      proxy_pool_fn: ``(model, projection_index) -> float [C, P, D]`` raw pool embeddings (the
        Trainer's ``proxy_pool_fn``).
    A projection with ``random_init`` and no proxy rebuild (``proxy_owner=None``) needs none.
    """

    def __init__(self, proxy_pool=None, proxy_pool_fn=None):
        super().__init__()
        if proxy_pool is not None and proxy_pool_fn is not None:
            raise ValueError("give proxy_pool or proxy_pool_fn, not both")
        self.proxy_pool = proxy_pool
        self.proxy_pool_fn = proxy_pool_fn
        self._steps_seen = None
        self.last_decision = None

    @property
    def projection(self):
        projection = getattr(self.model, "projection", None)
        if projection is None:
            raise ValueError("AlternatingProjectionCallback needs a ccp.models.MetricModel "
                             "built with a projection: MetricModel(embedder, loss, "
                             "projection=ccp.projection.AlternatingProjection(...))")
        return projection

    def _pool(self, index):
        """Raw pool embeddings ``[C, P, D]`` of projection ``index``."""
        if self.proxy_pool_fn is not None:
            return self.proxy_pool_fn(self.model, index)
        if self.proxy_pool is None:
            raise ValueError("CCP proxies need proxy_pool (a dataset) or proxy_pool_fn unless "
                             "the projection has random_init=True")
        dataset = self.proxy_pool if isinstance(self.proxy_pool, tf.data.Dataset) \
            else self.proxy_pool(index)
        projection = self.projection
        num_classes, per_class, _ = projection.bank_shape
        rounds = (None if projection.pool_size is None
                  else kcenter.pool_rounds(projection.pool_size, per_class))
        return embedding_lib.pool_embeddings(self.model, dataset, num_classes, rounds)

    def _pool_fn(self):
        if self.projection.has_proxies and (self.proxy_pool is not None
                                            or self.proxy_pool_fn is not None):
            return self._pool
        return None

    def on_train_begin(self, logs=None):
        self._steps_seen = None
        per_call = int(getattr(self.model, "steps_per_execution", 1) or 1)
        if self.projection.projection_every_steps and per_call > 1:
            raise ValueError(f"projection_every_steps needs batch ends at every step: compile "
                             f"with steps_per_execution=1 (got {per_call})")

    def on_train_batch_begin(self, batch, logs=None):
        if self._steps_seen is not None:
            return
        # First batch of this fit: every on_train_begin (BackupAndRestore's restore) has run.
        event = self.projection.initialize_proxies(self._pool_fn())
        if event is not None:
            logging.info("CCP fit: initial proxies %s", event)
        self._steps_seen = self._optimizer_steps()

    def _optimizer_steps(self):
        return int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))

    def on_train_batch_end(self, batch, logs=None):
        every = self.projection.projection_every_steps
        if not every:
            return
        now = self._optimizer_steps()
        offsets = self.projection.projection_offsets(self._steps_seen, now - self._steps_seen)
        self._steps_seen = now
        for _ in offsets:
            self.projection.project(self._pool_fn())

    def on_epoch_end(self, epoch, logs=None):
        logs = {} if logs is None else logs
        projection = self.projection
        # Projections every N steps or every N epochs compare no values.
        compares = not (projection.projection_every_steps
                        or projection.schedule.fixed_interval is not None)
        try:
            value = projection.monitored_value(logs) if compares else None
        except ValueError as error:
            raise ValueError(f"{error}. Put ccp.callbacks.RetrievalEvaluation(validation_data) "
                             f"before AlternatingProjectionCallback in the callbacks") from None
        symptom = health.collapse_symptom(logs)
        if symptom is not None:  # a collapsed model would feed CCP a meaningless pool
            raise health.TrainingCollapsed(
                f"training collapsed at epoch {epoch + 1}: {symptom}. Likely cause: a learning "
                f"rate too large for this model; lower it (SPEC §6 uses 1e-5) or check the "
                f"inputs")
        decision = projection.on_epoch_end(value, self._pool_fn())
        if decision.event is not None:
            logging.info("CCP fit: epoch %d: %s", epoch + 1, decision.event)
        self.last_decision = decision
        state = projection.state_dict()
        logs.update({"ccp_instance": state["instance"], "ccp_lambda_t": state["lambda"]})
