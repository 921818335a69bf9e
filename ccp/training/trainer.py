"""The training loop (SPEC §6): traced train step, eager epoch ends, checkpoints, early stopping.

"Eager shell, traced body": one ``tf.function`` runs a distributed train step (forward, loss,
gradient, all-reduce, gradient transforms, Adam); the epoch end runs eagerly and holds the
validation MAP@R, early stopping, the CCP schedule (:class:`ccp.projection.AlternatingProjection`),
the plateau learning-rate schedule, logging and the checkpoint.

Distribution: create the model, the loss and the Trainer inside ``strategy.scope()`` (the
Trainer enters the scope itself for the variables it creates). In each replica the embeddings
and labels are all-gathered, so pair losses see the global batch exactly as one device holding
it would; every replica then computes the same global loss, divided by the replica count, so
the sum of the replicas' gradients is the single-device gradient. That sum is taken *before*
the gradient transforms (global-norm clipping must see the true gradient); the optimizer then
sums its inputs over replicas once more, so each replica hands it ``1/num_replicas`` of the
transformed gradient. Static shapes and no Python side effects in the step (TPU-compatible).
"""
import math
import os
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from ccp import layers as layers_lib
from ccp import metrics as metrics_lib
from ccp.training import embedding as embedding_lib
from ccp.training import events as events_lib
from ccp.training import optimizers as optimizers_lib
from ccp.training import schedules as schedules_lib
from ccp.training import transforms as transforms_lib

TRAIN = "train"
WARMUP = "warmup"


class TrainerState(tf.Module):
    """Counters, early-stopping state and the best-weights snapshot (saved in every checkpoint).

    Args:
      snapshot_sources: the variables whose best values are kept (model weights incl.
        BatchNorm statistics, and the loss's trainable variables).
    """

    def __init__(self, snapshot_sources):
        super().__init__(name="trainer_state")
        self.epoch = tf.Variable(0, trainable=False, dtype=tf.int64, name="epoch")
        self.step = tf.Variable(0, trainable=False, dtype=tf.int64, name="step")
        self.best_metric = tf.Variable(-np.inf, trainable=False, dtype=tf.float32,
                                       name="best_metric")
        self.best_epoch = tf.Variable(0, trainable=False, dtype=tf.int64, name="best_epoch")
        self.wait = tf.Variable(0, trainable=False, dtype=tf.int64, name="wait")
        self.best_weights = [tf.Variable(tf.identity(v), trainable=False, name=f"best_{i}")
                             for i, v in enumerate(snapshot_sources)]


class RandomState(tf.Module):
    """The random-number states of the model and loss layers (e.g. Dropout's Keras
    ``SeedGenerator``), which ``tf.train.Checkpoint`` does not reach through the layers.

    Args:
      layers: layers (models) whose ``variables`` that are not ``weights`` are RNG states.
    """

    def __init__(self, layers):
        super().__init__(name="random_state")
        states = []
        for layer in layers:
            weight_ids = {id(w) for w in layer.weights}
            states.extend(v for v in layer.variables if id(v) not in weight_ids)
        self.states = states


def _find_proxy_owner(loss):
    """The layer (``loss`` or one nested in it) with ``proxies_by_class``/``assign_proxies``."""
    candidates = [loss] + layers_lib.sublayers(loss)
    for layer in candidates:
        if hasattr(layer, "proxies_by_class") and hasattr(layer, "assign_proxies"):
            try:
                layer.proxies_by_class()
            except AttributeError:  # a wrapper (e.g. XBM) around a loss without proxies
                continue
            return layer
    return None


def _dense(grad):
    return tf.convert_to_tensor(grad) if isinstance(grad, tf.IndexedSlices) else grad


def _worker_role(strategy):
    """``(is_chief, name)`` of this process in a multi-worker cluster (chief for one process)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    jobs = resolver.cluster_spec().as_dict() if resolver is not None else {}
    if not jobs or resolver.task_type is None:
        return True, "chief"
    task_type, task_id = resolver.task_type, int(resolver.task_id or 0)
    chief = task_type == "chief" or (task_type == "worker" and task_id == 0 and "chief" not in jobs)
    return chief, f"{task_type}_{task_id}"


class Trainer:
    """Custom training loop for an embedding model and a ``ccp.losses`` loss layer.

    Args:
      model: keras model, images ``[B, ...]`` -> raw embeddings ``[B, D]``.
      loss: a loss layer with ``loss_terms(labels, embeddings, training) -> {"loss": scalar,
        ...}``, its variables already created; ``proxy_variables`` (list) marks the variables
        the proxy learning-rate multiplier applies to.
      strategy: a ``tf.distribute.Strategy``; None = ``tf.distribute.get_strategy()``.
      projection: an :class:`ccp.projection.AlternatingProjection` for CCP, or None.
      learning_rate, adam_beta_1, adam_beta_2, adam_epsilon: Adam (SPEC §6).
      lr_schedule: "constant", "exponential" (per step) or "plateau" (on validation MAP@R).
      lr_decay_rate: exponential rate (default 0.1) or plateau factor (default 0.5).
      lr_decay_steps, lr_staircase: exponential schedule.
      lr_plateau_patience, lr_plateau_min_delta, lr_plateau_cooldown, min_learning_rate:
        plateau schedule.
      proxy_lr_multiplier: learning-rate multiplier of ``loss.proxy_variables`` (a true
        step-size multiplier, as the reference's AdamLRM; see ``ccp.training.optimizers``).
      weight_decay, clip_norm, clip_value: the default transform chain (0 disables one).
      gradient_transforms: list of transforms replacing that default chain (the CCP proximal
        term, when a projection is given, always runs first).
      steps_per_epoch, max_epochs: the epoch loop.
      patience, min_delta: early stopping on validation MAP@R; the best weights are restored at
        the end.
      warmup_epochs: first epochs training only the layer named "embedding" and the loss's
        variables (backbone in inference mode), with their own Adam.
      checkpoint_dir: folder of a ``tf.train.CheckpointManager`` (saved every epoch); a Trainer
        with the same arguments resumes from its latest checkpoint. None disables checkpoints.
      max_checkpoints: checkpoints kept.
      log_dir: TensorBoard scalars and ``events.jsonl``; None disables them.
      recall_at: ranks of the validation Recall@K (logged).
      progress_bar: a tqdm bar per epoch on stderr.
    """

    def __init__(self, model, loss, *, strategy=None, projection=None, learning_rate=1e-5,
                 adam_beta_1=0.9, adam_beta_2=0.999, adam_epsilon=1e-7, lr_schedule="constant",
                 lr_decay_rate=None, lr_decay_steps=10000, lr_staircase=True,
                 lr_plateau_patience=5, lr_plateau_min_delta=1e-3, lr_plateau_cooldown=2,
                 min_learning_rate=1e-6, proxy_lr_multiplier=1.0, weight_decay=1e-4,
                 clip_norm=10.0, clip_value=10.0, gradient_transforms=None, steps_per_epoch=25,
                 max_epochs=100, patience=60, min_delta=1e-5, warmup_epochs=0,
                 checkpoint_dir=None, max_checkpoints=2, log_dir=None, recall_at=(1,),
                 progress_bar=True):
        if int(steps_per_epoch) < 1 or int(max_epochs) < 1:
            raise ValueError(f"steps_per_epoch and max_epochs must be >= 1, got "
                             f"{steps_per_epoch} and {max_epochs}")
        if int(patience) < 1 or int(warmup_epochs) < 0:
            raise ValueError(f"patience must be >= 1 and warmup_epochs >= 0, got {patience} "
                             f"and {warmup_epochs}")
        if learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {learning_rate}")
        if not hasattr(loss, "loss_terms"):
            raise TypeError(f"loss must be a ccp.losses loss layer with loss_terms(); got "
                            f"{type(loss).__name__}")
        self.model = model
        self.loss = loss
        self.strategy = strategy or tf.distribute.get_strategy()
        self.projection = projection
        self.steps_per_epoch = int(steps_per_epoch)
        self.max_epochs = int(max_epochs)
        self.patience = int(patience)
        self.min_delta = float(min_delta)
        self.warmup_epochs = int(warmup_epochs)
        self.checkpoint_dir = checkpoint_dir
        self.log_dir = log_dir
        self.recall_at = tuple(int(k) for k in recall_at)
        self.progress_bar = bool(progress_bar)
        self.lr_schedule_name = lr_schedule
        if lr_schedule not in schedules_lib.LR_SCHEDULES:
            raise ValueError(f"unknown lr_schedule {lr_schedule!r}; valid: "
                             f"{', '.join(schedules_lib.LR_SCHEDULES)}")

        self.model_variables = list(model.trainable_variables)
        self.loss_variables = list(loss.trainable_variables)
        if not self.model_variables:
            raise ValueError("the model has no trainable variables")
        model_ids = {id(v) for v in self.model_variables}
        if any(id(v) in model_ids for v in self.loss_variables):
            raise ValueError("the loss and the model share variables")
        self.proxy_variables = list(getattr(loss, "proxy_variables", None) or [])
        self.variables = {TRAIN: self.model_variables + self.loss_variables}
        if self.warmup_epochs:
            head = transforms_lib.find_layer(model, "embedding")
            if head is None or not head.trainable_variables:
                raise ValueError("warmup_epochs > 0 needs a trainable layer named 'embedding' "
                                 "in the model")
            self.variables[WARMUP] = list(head.trainable_variables) + self.loss_variables

        if lr_decay_rate is None:
            lr_decay_rate = 0.1 if lr_schedule == "exponential" else 0.5
        schedule = schedules_lib.build_learning_rate(
            lr_schedule, learning_rate, decay_rate=lr_decay_rate, decay_steps=lr_decay_steps,
            staircase=lr_staircase)
        multipliers = [(self.proxy_variables, proxy_lr_multiplier)] if self.proxy_variables else []
        if proxy_lr_multiplier != 1.0 and not self.proxy_variables:
            logging.warning("proxy_lr_multiplier=%s ignored: the loss has no proxy_variables",
                            proxy_lr_multiplier)
        adam = dict(beta_1=adam_beta_1, beta_2=adam_beta_2, epsilon=adam_epsilon,
                    lr_multipliers=multipliers)

        with self.strategy.scope():
            self.optimizers = {TRAIN: optimizers_lib.build_optimizer(
                self.variables[TRAIN], schedule, name="adam", **adam)}
            if self.warmup_epochs:
                self.optimizers[WARMUP] = optimizers_lib.build_optimizer(
                    self.variables[WARMUP], float(learning_rate), name="warmup_adam", **adam)
            self.plateau = None
            if lr_schedule == "plateau":
                self.plateau = schedules_lib.ReduceLROnPlateau(
                    factor=lr_decay_rate, patience=lr_plateau_patience,
                    min_delta=lr_plateau_min_delta, cooldown=lr_plateau_cooldown,
                    min_lr=min_learning_rate)
            chain = []
            self._proxy_owner = None
            if projection is not None:
                self._proxy_owner = _find_proxy_owner(loss)
                projection.attach(self.model_variables, self._proxy_owner)
                chain.append(projection.gradient_transform())
            if gradient_transforms is None:
                chain.extend(transforms_lib.default_gradient_transforms(
                    model, loss, weight_decay=weight_decay, clip_norm=clip_norm,
                    clip_value=clip_value))
            else:
                chain.extend(gradient_transforms)
            self.gradient_transforms = chain
            self._snapshot_sources = list(model.weights) + self.loss_variables
            self.state = TrainerState(self._snapshot_sources)

        tracked = dict(model=model, loss=loss, optimizer=self.optimizers[TRAIN], state=self.state)
        self.random_state = RandomState([model, loss])
        if self.random_state.states:
            tracked["random_state"] = self.random_state
        if WARMUP in self.optimizers:
            tracked["warmup_optimizer"] = self.optimizers[WARMUP]
        if projection is not None:
            tracked["projection"] = projection
        if self.plateau is not None:
            tracked["plateau"] = self.plateau
        self.checkpoint = tf.train.Checkpoint(**tracked)
        self.manager = None
        self.is_chief, worker_name = _worker_role(self.strategy)
        if not self.is_chief:
            # Saving is collective, so every worker saves; only the chief's files are the run's.
            # The others write to a private folder, resume from the chief's latest checkpoint
            # and keep no event log.
            self.log_dir = None
        if checkpoint_dir:
            save_dir = checkpoint_dir if self.is_chief else os.path.join(checkpoint_dir, worker_name)
            self.manager = tf.train.CheckpointManager(self.checkpoint, save_dir,
                                                      max_to_keep=int(max_checkpoints))
        self._step_fns = {}
        logging.info("Trainer: %d model variables, %d loss variables (%d proxy), transforms %s, "
                     "%d replica(s)", len(self.model_variables), len(self.loss_variables),
                     len(self.proxy_variables), self.gradient_transforms,
                     self.strategy.num_replicas_in_sync)

    # --- traced body ------------------------------------------------------------------------
    def _replica_gradients(self, images, labels, phase):
        """Loss terms and the transformed global-batch gradients of ``self.variables[phase]``."""
        ctx = tf.distribute.get_replica_context()
        num_replicas = ctx.num_replicas_in_sync
        variables = self.variables[phase]
        optimizer = self.optimizers[phase]
        loss_scaled = isinstance(optimizer, keras.mixed_precision.LossScaleOptimizer)
        with tf.GradientTape() as tape:
            embeddings = tf.cast(self.model(images, training=(phase == TRAIN)), tf.float32)
            labels = tf.reshape(tf.cast(labels, tf.int32), [-1])
            if num_replicas > 1:
                # Pair losses must see the global batch (all replicas compute the same loss).
                embeddings = ctx.all_gather(embeddings, axis=0)
                labels = ctx.all_gather(labels, axis=0)
            terms = {k: tf.cast(v, tf.float32)
                     for k, v in self.loss.loss_terms(labels, embeddings, training=True).items()}
            objective = terms["loss"] / num_replicas
            if self.model.losses:  # per-replica regularization losses: summed over replicas
                objective += tf.cast(tf.add_n(self.model.losses), tf.float32) / num_replicas
            if loss_scaled:
                objective = optimizer.scale_loss(objective)
        grads = [None if g is None else tf.cast(_dense(g), tf.float32)
                 for g in tape.gradient(objective, variables)]
        if loss_scaled:
            scale = tf.cast(optimizer.dynamic_scale, tf.float32)
            grads = [None if g is None else g / scale for g in grads]
        if num_replicas > 1:
            present = [i for i, g in enumerate(grads) if g is not None]
            reduced = ctx.all_reduce(tf.distribute.ReduceOp.SUM, [grads[i] for i in present])
            for i, g in zip(present, reduced):
                grads[i] = g
        # The raw global gradient norm: logged, and a NaN gradient with a finite loss (e.g. NaN
        # inputs through a ReLU) stops training too (expected overflows under loss scaling do not).
        terms["grad_norm"] = tf.linalg.global_norm([g for g in grads if g is not None])
        grads = transforms_lib.apply_transforms(self.gradient_transforms, grads, variables)
        return terms, grads

    def _replica_step(self, images, labels, phase):
        terms, grads = self._replica_gradients(images, labels, phase)
        ctx = tf.distribute.get_replica_context()
        optimizer = self.optimizers[phase]
        share = 1.0 / ctx.num_replicas_in_sync  # the optimizer sums over replicas again
        if isinstance(optimizer, keras.mixed_precision.LossScaleOptimizer):
            # Hand the loss-scale optimizer scaled gradients: it unscales them (exact, a power of
            # two), skips the update when they are not finite and adapts the scale.
            share = share * tf.cast(optimizer.dynamic_scale, tf.float32)
        pairs = [(g * share, v) for g, v in zip(grads, self.variables[phase]) if g is not None]
        optimizer.apply_gradients(pairs)
        return terms

    def _step_fn(self, phase):
        if phase not in self._step_fns:
            def replica_step(images, labels):
                return self._replica_step(images, labels, phase)

            @tf.function
            def step(iterator):
                images, labels = next(iterator)
                terms = self.strategy.run(replica_step, args=(images, labels))
                self.state.step.assign_add(1)
                # Every replica holds the same global loss: take it from the first one.
                return {k: self.strategy.experimental_local_results(v)[0]
                        for k, v in terms.items()}

            self._step_fns[phase] = step
        return self._step_fns[phase]

    def distribute(self, dataset):
        """An iterator over ``dataset`` (global batches) distributed with this trainer's strategy.

        Each input pipeline (one per worker) takes its contiguous share of every global batch and
        hands consecutive per-replica slices to its replicas, so with any number of workers the
        all-gathered batch in the replica step is exactly the global batch, in order. (Auto
        sharding would instead give the workers different batches or the same half twice.)
        """
        batch_size = dataset.element_spec[0].shape[0]
        replicas = self.strategy.num_replicas_in_sync
        if batch_size is None or replicas == 1:
            return iter(self.strategy.experimental_distribute_dataset(dataset))
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

        return iter(self.strategy.distribute_datasets_from_function(dataset_fn))

    def train_step(self, iterator, phase=TRAIN):
        """Runs one optimization step on the next batch of ``iterator`` (see :meth:`distribute`).

        Returns:
          dict of float32 scalar tensors, the loss terms of the global batch.
        """
        return self._step_fn(phase)(iterator)

    def compute_gradients(self, images, labels, phase=TRAIN):
        """The loss terms and the transformed gradients of one global batch, without a step.

        The batch is split over the replicas as a distributed dataset would split it.

        Args:
          images: ``[B, ...]`` global batch; labels: int ``[B]``.
        Returns:
          ``(terms, grads)``: dict of floats, and a list of numpy arrays aligned with
          ``self.variables[phase]`` (zeros where a variable has no gradient).
        """
        dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(len(labels))
        images_d, labels_d = next(self.distribute(dataset))
        variables = self.variables[phase]

        def replica(images, labels):
            terms, grads = self._replica_gradients(images, labels, phase)
            return terms, [tf.zeros_like(v) if g is None else g
                           for g, v in zip(grads, variables)]

        @tf.function
        def run(images, labels):
            return self.strategy.run(replica, args=(images, labels))

        terms, grads = run(images_d, labels_d)
        first = self.strategy.experimental_local_results
        return ({k: float(first(v)[0]) for k, v in terms.items()},
                [first(g)[0].numpy() for g in grads])

    # --- eager shell --------------------------------------------------------------------------
    def evaluate(self, dataset):
        """Retrieval metrics of the model on a finite ``(images, labels)`` dataset (query set =
        reference set), e.g. the validation fold.

        Returns:
          dict of floats (``map_at_r``, ``r_precision``, ``precision_at_1``, ``recall_at_k``...).
        """
        embeddings, labels = embedding_lib.embed_dataset(self.model, dataset,
                                                         strategy=self.strategy)
        if labels is None:
            raise ValueError("validation data must yield (images, labels)")
        results = metrics_lib.retrieval_metrics(embeddings, labels, recall_at=self.recall_at)
        return {k: float(v) for k, v in results.items()
                if isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool)}

    def learning_rate(self, phase=TRAIN):
        """The current learning rate of a phase's optimizer (float)."""
        optimizer = optimizers_lib.inner_optimizer(self.optimizers[phase])
        return float(tf.convert_to_tensor(optimizer.learning_rate).numpy())

    def restore(self):
        """Restores the latest checkpoint if there is one; returns its path or None."""
        if self.manager is None:
            return None
        path = tf.train.latest_checkpoint(self.checkpoint_dir)  # the chief's, on every worker
        if path is None:
            return None
        try:
            self.checkpoint.restore(path).assert_existing_objects_matched()
        except AssertionError as error:
            raise ValueError(
                f"checkpoint {path} does not match this trainer (model, loss, optimizer, "
                f"projection or schedule differ from the run that wrote it): {error}") from error
        logging.info("resumed from %s (epoch %d, step %d)", path, int(self.state.epoch.numpy()),
                     int(self.state.step.numpy()))
        return path

    def _loss_scaled(self, phase):
        return isinstance(self.optimizers[phase], keras.mixed_precision.LossScaleOptimizer)

    def _snapshot_best(self):
        for best, variable in zip(self.state.best_weights, self._snapshot_sources):
            best.assign(variable)

    def restore_best_weights(self):
        """Sets the model (and loss variables) to the best early-stopping snapshot, if any."""
        if int(self.state.best_epoch.numpy()) == 0:
            return False
        for best, variable in zip(self.state.best_weights, self._snapshot_sources):
            variable.assign(best)
        return True

    def _stopped_early(self):
        return int(self.state.best_epoch.numpy()) > 0 and \
            int(self.state.wait.numpy()) >= self.patience

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
        """
        started = time.time()
        resumed_from = self.restore()
        resume_epoch = int(self.state.epoch.numpy())
        log = events_lib.EventLog(self.log_dir, resume_epoch)
        pool_fn = None
        if proxy_pool_fn is not None:
            def pool_fn(index):
                return proxy_pool_fn(self.model, index)
        if self.projection is not None:
            if validation_data is None:
                logging.warning("CCP without validation data: the projection schedule never "
                                "runs (it is driven by the validation MAP@R)")
            event = self.projection.initialize_proxies(pool_fn)
            if event is not None:
                log.write({**event, "epoch": resume_epoch})

        stop_reason = "max_epochs"
        try:
            if self._stopped_early():
                stop_reason = "early_stopping"
            elif resume_epoch < self.max_epochs:
                stop_reason = self._epochs(train_dataset_fn, validation_data, pool_fn, log,
                                           callbacks)
        finally:
            log.close()
        if validation_data is not None and self.restore_best_weights():
            logging.info("restored the best weights (epoch %d, MAP@R %.4f)",
                         int(self.state.best_epoch.numpy()), float(self.state.best_metric.numpy()))
        best_epoch = int(self.state.best_epoch.numpy())
        return {
            "epochs": int(self.state.epoch.numpy()),
            "steps": int(self.state.step.numpy()),
            "best_metric": float(self.state.best_metric.numpy()) if best_epoch else None,
            "best_epoch": best_epoch,
            "stop_reason": stop_reason,
            "history": log.of_type("epoch"),
            "projections": log.of_type("projection"),
            "resumed_from": resumed_from,
            "seconds": time.time() - started,
        }

    def _epochs(self, train_dataset_fn, validation_data, pool_fn, log, callbacks):
        iterator = self.distribute(train_dataset_fn(int(self.state.step.numpy())))
        while int(self.state.epoch.numpy()) < self.max_epochs:
            epoch = int(self.state.epoch.numpy()) + 1
            phase = WARMUP if epoch <= self.warmup_epochs else TRAIN
            seconds = time.time()
            means = self._run_epoch(iterator, epoch, phase)
            record = {"event": "epoch", "epoch": epoch, "step": int(self.state.step.numpy()),
                      "phase": phase, **means, "lr": self.learning_rate(phase),
                      "train_seconds": time.time() - seconds}
            metric = None
            if validation_data is not None:
                validation = self.evaluate(validation_data)
                metric = validation.get("map_at_r")
                record.update({f"val_{k}": v for k, v in validation.items()})
            record["map_at_r"] = metric
            if phase == TRAIN and metric is not None:
                self._early_stopping_update(epoch, metric)
                if self.projection is not None:
                    # After the early-stopping snapshot: a projection replaces the proxies.
                    decision = self.projection.on_epoch_end(metric, pool_fn)
                    record["ccp_action"] = decision.action
                    if decision.event is not None:
                        log.write({**decision.event, "epoch": epoch})
                if self.plateau is not None:
                    new_lr = self.plateau.on_epoch_end(metric, self.optimizers[TRAIN])
                    if new_lr is not None:
                        log.write({"event": "lr", "epoch": epoch, "lr": new_lr})
            if self.projection is not None:
                state = self.projection.state_dict()
                record.update({"lambda": state["lambda"], "instance": state["instance"]})
            record.update({"best_map_at_r": float(self.state.best_metric.numpy())
                           if int(self.state.best_epoch.numpy()) else None,
                           "epochs_without_improvement": int(self.state.wait.numpy())})
            self.state.epoch.assign(epoch)
            log.write(record)
            logging.info("epoch %d (%s): loss %.4g, validation MAP@R %s, lr %.3g", epoch, phase,
                         means.get("loss", float("nan")),
                         "n/a" if metric is None else f"{metric:.4f}", record["lr"])
            if self.manager is not None:
                self.manager.save(checkpoint_number=epoch)
            for callback in callbacks:
                callback(self, record)
            if self._stopped_early():
                log.write({"event": "stop", "epoch": epoch, "stop_reason": "early_stopping",
                           "best_epoch": int(self.state.best_epoch.numpy())})
                return "early_stopping"
        return "max_epochs"

    def _early_stopping_update(self, epoch, metric):
        if metric > float(self.state.best_metric.numpy()) + self.min_delta:
            self.state.best_metric.assign(metric)
            self.state.best_epoch.assign(epoch)
            self.state.wait.assign(0)
            self._snapshot_best()
        else:
            self.state.wait.assign_add(1)

    def _run_epoch(self, iterator, epoch, phase):
        step_fn = self._step_fn(phase)
        sums = {}
        bar = events_lib.ProgressBar(self.steps_per_epoch, f"epoch {epoch}", self.progress_bar)
        try:
            for _ in range(self.steps_per_epoch):
                try:
                    terms = {k: float(v) for k, v in step_fn(iterator).items()}
                except (tf.errors.OutOfRangeError, StopIteration) as error:
                    raise ValueError("train_dataset_fn(start_step) must yield batches forever; "
                                     f"it ended during epoch {epoch}") from error
                checked = {k: v for k, v in terms.items()
                           if k != "grad_norm" or not self._loss_scaled(phase)}
                if not all(math.isfinite(v) for v in checked.values()):
                    last = self.manager.latest_checkpoint if self.manager else None
                    raise FloatingPointError(
                        f"non-finite loss or gradient at epoch {epoch}, "
                        f"step {int(self.state.step.numpy())}: "
                        f"{terms}. Training stopped without saving this state; the last good "
                        f"checkpoint is {last}. Lower the learning rate or check the inputs.")
                for key, value in terms.items():
                    sums[key] = sums.get(key, 0.0) + value
                bar.update(terms)
        finally:
            bar.close()
        return {key: value / self.steps_per_epoch for key, value in sums.items()}
