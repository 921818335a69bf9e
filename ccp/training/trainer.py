"""The training loop (SPEC §6): fit -> epochs -> evaluate -> decisions -> checkpoint -> log.

"Eager shell, traced body": :class:`ccp.training.train_step.TrainStep` runs the distributed step
(forward, loss, gradient, all-reduce, gradient transforms, optimizer); the epoch end runs
eagerly and holds the validation MAP@R, the decisions (early stopping, the CCP projection, the
plateau learning rate), the checkpoint and the logs. The optimizer and the transform chain come
from the caller (:func:`ccp.training.build_optimization`).

Distribution: create the model, the loss, the projection, the optimization and the Trainer
inside ``strategy.scope()``.
"""
import time

import tensorflow as tf
from absl import logging

from ccp import defaults
from ccp.losses.base import MetricLoss
from ccp.projection import ProximalTerm
from ccp.tracking import ImprovementTracker, PythonStateCheckpoint
from ccp.training import checkpointing, distribution
from ccp.training import epoch as epoch_lib
from ccp.training import events as events_lib
from ccp.training import health
from ccp.training import optimizers as optimizers_lib
from ccp.training.optimization import TRAIN
from ccp.training.train_step import TrainStep


class TrainerState(tf.Module):
    """Counters, early stopping and the best-weights snapshot (saved in every checkpoint).

    Args:
      snapshot_sources: the variables whose best values are kept (model weights incl.
        BatchNorm statistics, and the loss's trainable variables).
      patience, min_delta: early stopping on the validation MAP@R.
    """

    def __init__(self, snapshot_sources, patience, min_delta):
        super().__init__(name="trainer_state")
        self.epoch = tf.Variable(0, trainable=False, dtype=tf.int64, name="epoch")
        self.step = tf.Variable(0, trainable=False, dtype=tf.int64, name="step")
        self.early_stopping = ImprovementTracker("max", min_delta=min_delta, patience=patience)
        self.early_stopping_state = PythonStateCheckpoint(self.early_stopping)
        self.sources = list(snapshot_sources)
        self.best_weights = [tf.Variable(tf.identity(v), trainable=False, name=f"best_{i}")
                             for i, v in enumerate(self.sources)]

    @property
    def best_epoch(self):
        """The epoch of the best validation value (0: none yet)."""
        return self.early_stopping.best_step or 0

    def snapshot_best(self):
        for best, variable in zip(self.best_weights, self.sources):
            best.assign(variable)


def _checked_variables(model, loss, projection, gradient_transforms):
    """``(model_variables, loss_variables, proxy_variables)``, checked for a sound setup."""
    model_variables = list(model.trainable_variables)
    loss_variables = list(loss.trainable_variables)
    if not model_variables:
        raise ValueError("the model has no trainable variables")
    model_ids = {id(v) for v in model_variables}
    if any(id(v) in model_ids for v in loss_variables):
        raise ValueError("the loss and the model share variables")
    if projection is not None and not any(
            isinstance(t, ProximalTerm) and t.anchor is projection.anchor
            for t in gradient_transforms):
        raise ValueError("the projection's proximal term is not in the gradient transforms: "
                         "build them with build_optimization(..., projection=projection)")
    return model_variables, loss_variables, list(loss.proxy_variables)


def _projection_of(optimization, projection):
    """The Trainer's projection: ``optimization.projection``, or ``projection`` when the
    optimization was built without one (its proximal term is checked separately)."""
    own = getattr(optimization, "projection", None)
    if projection is not None and own is not None and projection is not own:
        raise ValueError("Trainer(projection=...) differs from the projection given to "
                         "build_optimization: pass it once, to build_optimization")
    return own if projection is None else projection


def _checkpointed(trainer):
    """What a checkpoint of ``trainer`` holds: ``{name: trackable}``."""
    objects = dict(model=trainer.model, loss=trainer.loss,
                   optimizer=trainer.optimizers[TRAIN], state=trainer.state)
    random_states = checkpointing.random_states([trainer.model, trainer.loss])
    if random_states:
        objects["random_state"] = random_states
    for name, optimizer in trainer.optimizers.items():
        if name != TRAIN:
            objects[f"{name}_optimizer"] = optimizer
    if trainer.projection is not None:
        objects["projection"] = trainer.projection
    if trainer.optimization.plateau is not None:
        objects["plateau"] = PythonStateCheckpoint(trainer.optimization.plateau)
    return objects


def _initialize_proxies(trainer, pool_fn, has_validation, log):
    """The CCP projection's initial proxies (SPEC §5.4), logged; nothing without a projection."""
    if trainer.projection is None:
        return
    if not has_validation and not trainer.projection.projection_every_steps:
        logging.warning("CCP without validation data: the projection schedule never runs (it "
                        "is driven by the validation MAP@R)")
    event = trainer.projection.initialize_proxies(pool_fn)
    if event is not None:
        log.write({**event, "epoch": int(trainer.state.epoch.numpy())})


def _projection_offsets(trainer, epoch, steps):
    """Offsets in ``epoch``'s ``steps`` steps after which CCP projects (its
    ``projection_every_steps`` counts the training phase's steps: warm-up steps do not count,
    and the count comes from the checkpointed step counter, so a resumed run projects at the
    same steps); empty without a projection, in the warm-up, or at instance ends."""
    optimization = trainer.optimization
    if trainer.projection is None or optimization.phase_of_epoch(epoch) != TRAIN:
        return []
    warmup_steps = sum(optimization.steps_in_epoch(e, trainer.steps_per_epoch)
                       for e in range(1, epoch) if optimization.phase_of_epoch(e) != TRAIN)
    done = int(trainer.state.step.numpy()) - warmup_steps
    return trainer.projection.projection_offsets(done, steps)


def _step_projection(trainer, epoch, pool_fn, log):
    """``offset -> None``: the projection at a step inside ``epoch`` (the same pool function
    as at instance ends), logged with its epoch and its global step."""
    def project(offset):
        event = trainer.projection.project(pool_fn)
        log.write({**event, "epoch": epoch, "step": int(trainer.state.step.numpy())})
    return project


class Trainer:
    """Custom training loop for an embedding model and a ``ccp.losses`` loss layer.

    Args:
      model: keras model, images ``[B, ...]`` -> raw embeddings ``[B, D]``.
      loss: a ``ccp.losses`` loss layer, its variables created.
      optimization: :class:`ccp.training.Optimization` (phases, transforms, plateau schedule).
      strategy: a ``tf.distribute.Strategy``; None = ``tf.distribute.get_strategy()``.
      projection: the CCP :class:`ccp.projection.AlternatingProjection`; by default
        ``optimization.projection`` (the one given to ``build_optimization``: pass it there
        once). Given here too it must be the same object; a projection whose proximal term is
        not in ``optimization.gradient_transforms`` is refused.
      steps_per_epoch, max_epochs: the epoch loop.
      patience, min_delta: early stopping on validation MAP@R; the best weights are restored at
        the end.
      checkpoint_dir: folder of the checkpoints (saved every epoch); a Trainer with the same
        objects resumes from its latest checkpoint. None disables checkpoints.
      log_dir: TensorBoard scalars and ``events.jsonl``; None disables them.
      recall_at: ranks of the validation Recall@K (logged).
      progress_bar: a tqdm bar per epoch on stderr.
      steps_per_execution: train steps per ``tf.function`` call (the host reads the device
        once per call); the results do not depend on it.
      jit_compile: compile the replica step with XLA (the TPU path; off by default on CPU/GPU).
    """

    def __init__(self, model, loss, optimization, *, strategy=None, projection=None,
                 steps_per_epoch=defaults.STEPS_PER_EPOCH, max_epochs=defaults.MAX_EPOCHS,
                 patience=defaults.EARLY_STOPPING_PATIENCE,
                 min_delta=defaults.EARLY_STOPPING_MIN_DELTA, checkpoint_dir=None, log_dir=None,
                 recall_at=defaults.RECALL_AT, progress_bar=True, steps_per_execution=1,
                 jit_compile=False):
        if min(int(steps_per_epoch), int(max_epochs), int(steps_per_execution)) < 1:
            raise ValueError(f"steps_per_epoch, max_epochs and steps_per_execution must be >= 1,"
                             f" got {steps_per_epoch}, {max_epochs} and {steps_per_execution}")
        if not isinstance(loss, MetricLoss):
            raise TypeError(f"loss must be a ccp.losses loss layer, got {type(loss).__name__}")
        self.model, self.loss, self.optimization = model, loss, optimization
        self.strategy = strategy or tf.distribute.get_strategy()
        self.projection = _projection_of(optimization, projection)
        self.steps_per_epoch, self.max_epochs = int(steps_per_epoch), int(max_epochs)
        self.steps_per_execution = int(steps_per_execution)
        self.recall_at = tuple(int(k) for k in recall_at)
        self.progress_bar = bool(progress_bar)
        self.model_variables, self.loss_variables, self.proxy_variables = _checked_variables(
            model, loss, self.projection, optimization.gradient_transforms)
        with self.strategy.scope():
            self.state = TrainerState(list(model.weights) + self.loss_variables, patience,
                                      min_delta)
        self.steps = {name: TrainStep(model, loss, phase, optimization.gradient_transforms,
                                      self.strategy, self.state.step, jit_compile)
                      for name, phase in optimization.phases.items()}
        self.manager = checkpointing.Checkpointing(_checkpointed(self), checkpoint_dir,
                                                   self.strategy)
        # Only the chief keeps the run's event log (the other workers' would duplicate it).
        self.log_dir = log_dir if self.manager.is_chief else None
        logging.info("Trainer: %d model variables, %d loss variables (%d proxy), transforms %s, "
                     "%d replica(s)", len(self.model_variables), len(self.loss_variables),
                     len(self.proxy_variables), self.gradient_transforms,
                     self.strategy.num_replicas_in_sync)

    # --- what the Trainer trains --------------------------------------------------------------
    @property
    def gradient_transforms(self):
        return self.optimization.gradient_transforms

    @property
    def variables(self):
        """``{phase: variables}``."""
        return {name: phase.variables for name, phase in self.optimization.phases.items()}

    @property
    def optimizers(self):
        """``{phase: optimizer}``."""
        return {name: phase.optimizer for name, phase in self.optimization.phases.items()}

    def learning_rate(self, phase=TRAIN):
        """The current learning rate of a phase's optimizer (float)."""
        optimizer = optimizers_lib.inner_optimizer(self.optimizers[phase])
        return float(tf.convert_to_tensor(optimizer.learning_rate).numpy())

    def distribute(self, dataset):
        """``dataset`` (global batches) as an iterator of this strategy's per-replica batches."""
        return distribution.distribute(self.strategy, dataset)

    def train_step(self, iterator, phase=TRAIN):
        """One step on the next batch of ``iterator``: the loss terms (float32 scalars)."""
        return self.steps[phase].run(iterator, 1)[3]

    # --- the loop -----------------------------------------------------------------------------
    def fit(self, train_dataset_fn, validation_data=None, proxy_pool_fn=None, callbacks=()):
        """Trains until early stopping or ``max_epochs``, resuming from the latest checkpoint.

        Args:
          train_dataset_fn: ``start_step -> tf.data.Dataset`` of ``(images, labels int32 [B])``
            global batches, infinite and step-deterministic (restarting at step ``s`` yields
            the batches an uninterrupted run would see from step ``s`` on).
          validation_data: finite dataset of ``(images, labels)``, or None (no validation: no
            early stopping, no CCP schedule; ``max_epochs`` epochs run).
          proxy_pool_fn: ``(model, projection_index) -> float [C, P, D]`` raw pool embeddings,
            needed with a CCP projection (index 0 = initial proxies, ``t`` = projection ``t``).
          callbacks: callables ``(trainer, epoch_record)`` run after each epoch's checkpoint.
        Returns:
          dict: ``epochs``, ``steps``, ``best_metric`` (None without validation), ``best_epoch``,
          ``stop_reason`` ("early_stopping" or "max_epochs"), ``history`` (epoch records),
          ``projections`` (projection events), ``resumed_from``, ``seconds``.
        Raises:
          FloatingPointError: a non-finite loss; the last checkpoint (previous epoch) is kept.
          ccp.training.health.TrainingCollapsed: a collapsed model (vanished gradient with a
            stuck loss, or coinciding embeddings); the last checkpoint is kept.
        """
        started = time.time()
        resumed_from = self.restore()
        log = events_lib.EventLog(self.log_dir, int(self.state.epoch.numpy()))
        pool_fn = None
        if proxy_pool_fn is not None:
            def pool_fn(index):
                return proxy_pool_fn(self.model, index)
        try:
            _initialize_proxies(self, pool_fn, validation_data is not None, log)
            stop_reason = self._epochs(train_dataset_fn, validation_data, pool_fn, log,
                                       callbacks)
        finally:
            log.close()
        if validation_data is not None and self.restore_best_weights():
            logging.info("restored the best weights (epoch %d, MAP@R %.4f)",
                         self.state.best_epoch, self.state.early_stopping.best)
        best_epoch = self.state.best_epoch
        return {"epochs": int(self.state.epoch.numpy()), "steps": int(self.state.step.numpy()),
                "best_metric": self.state.early_stopping.best if best_epoch else None,
                "best_epoch": best_epoch, "stop_reason": stop_reason,
                "history": log.of_type("epoch"), "projections": log.of_type("projection"),
                "resumed_from": resumed_from, "seconds": time.time() - started}

    def _stopped_early(self):
        return self.state.best_epoch > 0 and self.state.early_stopping.exhausted

    def _epochs(self, train_dataset_fn, validation_data, pool_fn, log, callbacks):
        if self._stopped_early():
            return "early_stopping"
        if int(self.state.epoch.numpy()) >= self.max_epochs:
            return "max_epochs"
        iterator = self.distribute(train_dataset_fn(int(self.state.step.numpy())))
        while int(self.state.epoch.numpy()) < self.max_epochs:
            epoch = int(self.state.epoch.numpy()) + 1
            record = self._train_epoch(iterator, epoch,
                                       _step_projection(self, epoch, pool_fn, log))
            metric = self.validate(validation_data, record)
            symptom = health.collapse_symptom(record)
            if symptom is not None:
                raise health.TrainingCollapsed(health.collapse_message(
                    epoch, symptom, record, self.manager.latest_checkpoint))
            self._decide(epoch, metric, record, pool_fn, log)
            self.state.epoch.assign(epoch)
            log.write(record)
            logging.info("epoch %d (%s): loss %.4g, validation MAP@R %s, lr %.3g", epoch,
                         record["phase"], record.get("loss", float("nan")),
                         "n/a" if metric is None else f"{metric:.4f}", record["lr"])
            self.manager.save(epoch)
            for callback in callbacks:
                callback(self, record)
            if self._stopped_early():
                log.write({"event": "stop", "epoch": epoch, "stop_reason": "early_stopping",
                           "best_epoch": self.state.best_epoch})
                return "early_stopping"
        return "max_epochs"

    def _train_epoch(self, iterator, epoch, project_at=None):
        """Runs one epoch's steps, ``project_at(offset)`` after the steps where CCP projects
        every N steps; returns its record (mean loss terms, lr, seconds)."""
        started = time.time()
        phase = self.optimization.phase_of_epoch(epoch)
        steps = self.optimization.steps_in_epoch(epoch, self.steps_per_epoch)
        breaks = _projection_offsets(self, epoch, steps) if project_at else []
        means, bad_terms = epoch_lib.run_epoch(
            self.steps[phase], iterator, steps, self.steps_per_execution,
            epoch_lib.ProgressBar(steps, f"epoch {epoch}", self.progress_bar), breaks, project_at)
        if bad_terms is not None:
            raise FloatingPointError(
                f"non-finite loss or gradient at epoch {epoch}, step "
                f"{int(self.state.step.numpy())}: {bad_terms}. Training stopped without saving "
                f"this state; the last good checkpoint is {self.manager.latest_checkpoint}. "
                f"Lower the learning rate or check the inputs.")
        return {"event": "epoch", "epoch": epoch, "step": int(self.state.step.numpy()),
                "phase": phase, **means, "lr": self.learning_rate(phase),
                "train_seconds": time.time() - started}

    def validate(self, validation_data, record):
        """One epoch's validation: adds the metrics (``val_*``) to the epoch ``record`` and
        returns the value early stopping, the plateau schedule and CCP's default monitor follow
        (the MAP@R; None without validation data). Subclasses override it to follow another
        metric (``experiments/monitored.py``)."""
        metric = None
        if validation_data is not None:
            validation = self.evaluate(validation_data)
            metric = validation.get("map_at_r")
            record.update({f"val_{k}": v for k, v in validation.items()})
        record["map_at_r"] = metric
        return metric

    def _decide(self, epoch, metric, record, pool_fn, log):
        """Early stopping, then the CCP projection, then the plateau learning rate."""
        if record["phase"] == TRAIN and metric is not None:
            if self.state.early_stopping.update(metric, step=epoch):
                self.state.snapshot_best()
            if self.projection is not None:
                # After the early-stopping snapshot: a projection replaces the proxies.
                decision = self.projection.on_epoch_end(
                    _monitored(self.projection, metric, record), pool_fn)
                record["ccp_action"] = decision.action
                if decision.event is not None:
                    log.write({**decision.event, "epoch": epoch, "step": record["step"]})
            plateau = self.optimization.plateau
            if plateau is not None:
                new_lr = plateau.on_epoch_end(metric, self.optimizers[TRAIN])
                if new_lr is not None:
                    log.write({"event": "lr", "epoch": epoch, "lr": new_lr})
        if self.projection is not None:
            state = self.projection.state_dict()
            record.update({"lambda": state["lambda"], "instance": state["instance"]})
        record.update({"best_map_at_r": self.state.early_stopping.best
                       if self.state.best_epoch else None,
                       "epochs_without_improvement": self.state.early_stopping.wait})

    # --- evaluation and checkpoints -----------------------------------------------------------
    def evaluate(self, dataset):
        """Retrieval metrics of the model on a finite ``(images, labels)`` dataset (query set =
        reference set): ``{"map_at_r", "r_precision", "precision_at_1", "recall_at_k"...}``."""
        return epoch_lib.validation_metrics(self.model, dataset, self.strategy, self.recall_at)

    def restore(self):
        """Restores the latest checkpoint if there is one; returns its path or None."""
        path = self.manager.restore()
        if path is not None:
            logging.info("resumed at epoch %d, step %d", int(self.state.epoch.numpy()),
                         int(self.state.step.numpy()))
        return path

    def restore_best_weights(self):
        """Sets the model (and loss variables) to the best early-stopping snapshot, if any."""
        if not self.state.best_epoch:
            return False
        for best, variable in zip(self.state.best_weights, self.state.sources):
            variable.assign(best)
        return True


def _monitored(projection, metric, record):
    """The value CCP's schedule follows: ``projection.monitor`` of this epoch's record
    ("map_at_r": the validation MAP@R; "loss": the epoch's mean training loss; another name:
    that validation metric, e.g. "precision_at_1", "recall_at_4", "r_precision")."""
    if getattr(projection, "monitor", "map_at_r") == "map_at_r":
        return metric
    return projection.monitored_value(record)
