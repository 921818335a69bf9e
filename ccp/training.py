"""Custom training loop (SPEC §6): tf.function train step, gradient transforms, checkpoints.

"Eager shell, traced body": the train step is a ``tf.function``; epoch ends run eagerly and hold
validation (MAP@R), the CCP schedule (:class:`ccp.projection.AlternatingProjection`), the
learning-rate schedule, early stopping, logging and checkpoints.

Distribution: build the model, the loss and the Trainer inside ``strategy.scope()``. Inside the
replica step the embeddings and labels are all-gathered so pair losses see the global batch, as
one device holding the whole batch would; every replica then computes the same global loss, and
the gradients are all-reduced *before* the transforms (so weight decay, the proximal term and
clipping act on the true gradient exactly once).
"""
import json
import math
import os
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from ccp import metrics as metrics_lib
from ccp import projection as projection_lib

# --------------------------------------------------------------------------------------------
# Gradient transforms: callables ``(grads, variables) -> grads`` applied in the given order.
# --------------------------------------------------------------------------------------------


class ProximalTerm:
    """``g += lambda_t (w - w_prev)`` on the model weights tracked by the projection (SPEC §5.1)."""

    def __init__(self, projection):
        self.projection = projection
        self._keys = None

    def __call__(self, grads, variables):
        if self._keys is None:
            self._keys = {id(v): i for i, v in enumerate(self.projection.model_variables)}
        out = []
        for g, v in zip(grads, variables):
            index = self._keys.get(id(v))
            if g is None or index is None:
                out.append(g)
                continue
            anchor = self.projection.w_prev[index]
            out.append(g + self.projection.lambda_t * (tf.cast(v, g.dtype) - anchor))
        return out


class WeightDecay:
    """``g += rate * w`` for the given variables (the model's non-BatchNorm weights, SPEC §6)."""

    def __init__(self, rate, decayed_variables):
        self.rate = float(rate)
        self._ids = {id(v) for v in decayed_variables}

    def __call__(self, grads, variables):
        return [g + self.rate * tf.cast(v, g.dtype) if g is not None and id(v) in self._ids else g
                for g, v in zip(grads, variables)]


class ClipByGlobalNorm:
    def __init__(self, clip_norm):
        self.clip_norm = float(clip_norm)

    def __call__(self, grads, variables):
        present = [g for g in grads if g is not None]
        clipped, _ = tf.clip_by_global_norm(present, self.clip_norm)
        it = iter(clipped)
        return [next(it) if g is not None else None for g in grads]


class ClipByValue:
    def __init__(self, clip_value):
        self.clip_value = float(clip_value)

    def __call__(self, grads, variables):
        return [tf.clip_by_value(g, -self.clip_value, self.clip_value) if g is not None else None
                for g in grads]


def batchnorm_variables(model):
    """Variables of every keras BatchNormalization layer inside ``model`` (nested too)."""
    found = []
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            found.extend(layer.weights)
    return found


def default_gradient_transforms(model, weight_decay=1e-4, clip_norm=10.0, clip_value=10.0):
    """Weight decay on non-BatchNorm model weights, clip by global norm, clip by value (SPEC §6)."""
    transforms = []
    if weight_decay:
        bn = {id(v) for v in batchnorm_variables(model)}
        decayed = [v for v in model.trainable_variables if id(v) not in bn]
        transforms.append(WeightDecay(weight_decay, decayed))
    if clip_norm:
        transforms.append(ClipByGlobalNorm(clip_norm))
    if clip_value:
        transforms.append(ClipByValue(clip_value))
    return transforms


# --------------------------------------------------------------------------------------------
# Learning-rate schedules: eager objects with checkpointable state.
# --------------------------------------------------------------------------------------------


class ConstantLR(tf.Module):
    def __init__(self, learning_rate):
        super().__init__()
        self.learning_rate = tf.Variable(float(learning_rate), trainable=False, name="lr")

    def at_step(self, step):
        return self.learning_rate

    def on_epoch_end(self, value):
        return None


class ExponentialDecayLR(ConstantLR):
    """``lr * rate ** (step / decay_steps)``, evaluated every step inside the train step."""

    def __init__(self, learning_rate, decay_rate=0.5, decay_steps=1000):
        super().__init__(learning_rate)
        self.decay_rate = float(decay_rate)
        self.decay_steps = float(decay_steps)

    def at_step(self, step):
        exponent = tf.cast(step, tf.float32) / self.decay_steps
        return self.learning_rate * tf.pow(self.decay_rate, exponent)


class ReduceOnPlateauLR(ConstantLR):
    """Multiplies the rate by ``factor`` after ``patience`` epochs without a MAP@R gain."""

    def __init__(self, learning_rate, factor=0.5, patience=10, min_delta=1e-5, min_lr=1e-8):
        super().__init__(learning_rate)
        self.factor, self.patience = float(factor), int(patience)
        self.min_delta, self.min_lr = float(min_delta), float(min_lr)
        self.best = tf.Variable(-np.inf, trainable=False, name="plateau_best")
        self.wait = tf.Variable(0, trainable=False, dtype=tf.int64, name="plateau_wait")

    def on_epoch_end(self, value):
        if value is None or math.isnan(value):
            return None
        if value > float(self.best.numpy()) + self.min_delta:
            self.best.assign(value)
            self.wait.assign(0)
            return None
        self.wait.assign_add(1)
        if int(self.wait.numpy()) >= self.patience:
            new = max(float(self.learning_rate.numpy()) * self.factor, self.min_lr)
            self.learning_rate.assign(new)
            self.wait.assign(0)
            logging.info("learning rate reduced to %.3g", new)
            return new
        return None


def make_lr_schedule(name, learning_rate, decay_rate=0.5, decay_steps=1000, plateau_patience=10):
    """Registry of schedules by name: constant, exponential, plateau."""
    builders = {
        "constant": lambda: ConstantLR(learning_rate),
        "exponential": lambda: ExponentialDecayLR(learning_rate, decay_rate, decay_steps),
        "plateau": lambda: ReduceOnPlateauLR(learning_rate, decay_rate, plateau_patience),
    }
    if name not in builders:
        raise ValueError(f"unknown lr schedule {name!r}; valid: {', '.join(builders)}")
    return builders[name]()


# --------------------------------------------------------------------------------------------
# Embedding passes.
# --------------------------------------------------------------------------------------------


def embed_dataset(model, dataset):
    """Embeds every batch of a finite dataset in inference mode.

    Args:
      model: images ``[N, H, W, 3]`` -> embeddings ``[N, D]``.
      dataset: yields ``(images, labels)`` (or ``images`` alone).
    Returns:
      ``(embeddings float32 [N, D], labels [N] or None)`` as numpy arrays.
    """
    forward = _inference_fn(model)
    embeddings, labels = [], []
    for batch in dataset:
        if isinstance(batch, (tuple, list)):
            images, batch_labels = batch[0], batch[1]
            labels.append(np.reshape(np.asarray(batch_labels), [-1]))
        else:
            images = batch
        embeddings.append(np.asarray(forward(images), np.float32))
    if not embeddings:
        raise ValueError("embed_dataset got an empty dataset")
    return np.concatenate(embeddings), (np.concatenate(labels) if labels else None)


def _inference_fn(model):
    cached = getattr(model, "_ccp_inference_fn", None)
    if cached is None:
        @tf.function(reduce_retracing=True)
        def cached(images):
            return tf.cast(model(images, training=False), tf.float32)
        model._ccp_inference_fn = cached
    return cached


# --------------------------------------------------------------------------------------------
# Trainer.
# --------------------------------------------------------------------------------------------


class _TrainerState(tf.Module):
    """Counters and early-stopping state, saved in every checkpoint."""

    def __init__(self, snapshot_variables):
        super().__init__(name="trainer_state")
        self.epoch = tf.Variable(0, trainable=False, dtype=tf.int64, name="epoch")
        self.step = tf.Variable(0, trainable=False, dtype=tf.int64, name="step")
        self.best_metric = tf.Variable(-np.inf, trainable=False, name="best_metric")
        self.best_epoch = tf.Variable(0, trainable=False, dtype=tf.int64, name="best_epoch")
        self.wait = tf.Variable(0, trainable=False, dtype=tf.int64, name="wait")
        self.best_weights = [tf.Variable(tf.convert_to_tensor(v), trainable=False, name=f"best_{i}")
                             for i, v in enumerate(snapshot_variables)]


class Trainer:
    """Custom training loop for an embedding model and a ``ccp.losses`` loss layer.

    Args:
      model: keras model, images -> raw embeddings ``[B, D]``.
      loss: a ``ccp.losses.MetricLoss`` (``loss_terms(labels, embeddings, training)``,
        ``proxy_variables``; CCP losses also ``proxies_by_class`` / ``assign_proxies``).
      strategy: a ``tf.distribute`` strategy (default: the current one). Build the model, the
        loss and this Trainer inside its scope.
      learning_rate, adam_beta_1, adam_beta_2: Adam (SPEC §6).
      lr_schedule: "constant", "exponential" or "plateau" (on validation MAP@R).
      lr_decay_rate, lr_decay_steps, lr_plateau_patience: schedule parameters.
      proxy_lr_multiplier: learning-rate multiplier of the loss's proxies. Proxies get their own
        Adam whose rate is ``multiplier * lr`` (a true learning-rate multiplier as in the
        reference's Adam-with-multipliers; scaling Adam's gradients would cancel out).
      weight_decay, clip_norm, clip_value: the default gradient transforms (0 disables).
      gradient_transforms: an explicit list of transforms instead of those defaults.
      projection: an ``AlternatingProjection`` (CCP) or None. Its proximal term runs first.
      steps_per_epoch, max_epochs: the epoch loop.
      patience, min_delta: early stopping on validation MAP@R; the best weights are restored.
      warmup_epochs: epochs training only the layer named ``embedding`` and the proxies.
      checkpoint_dir: ``tf.train.CheckpointManager`` folder; training resumes from it.
      log_dir: TensorBoard scalars and ``events.jsonl``.
      recall_at: ranks for the validation Recall@K (logged).
      progress_bar: a tqdm bar per epoch on stderr.
      loss_scale: static loss scale for float16 compute (default: 1024 under mixed_float16).
    """

    def __init__(self, model, loss, *, strategy=None, learning_rate=1e-5, adam_beta_1=0.9,
                 adam_beta_2=0.999, lr_schedule="constant", lr_decay_rate=0.5,
                 lr_decay_steps=1000, lr_plateau_patience=10, proxy_lr_multiplier=1.0,
                 weight_decay=1e-4, clip_norm=10.0, clip_value=10.0, gradient_transforms=None,
                 projection=None, steps_per_epoch=25, max_epochs=100, patience=60,
                 min_delta=1e-5, warmup_epochs=0, checkpoint_dir=None, log_dir=None,
                 max_checkpoints=2, recall_at=(1,), progress_bar=True, loss_scale=None):
        self.model = model
        self.loss = loss
        self.strategy = strategy or tf.distribute.get_strategy()
        self.steps_per_epoch = int(steps_per_epoch)
        self.max_epochs = int(max_epochs)
        self.patience = int(patience)
        self.min_delta = float(min_delta)
        self.warmup_epochs = int(warmup_epochs)
        self.recall_at = tuple(recall_at)
        self.progress_bar = progress_bar
        self.checkpoint_dir = checkpoint_dir
        self.log_dir = log_dir
        self.projection = projection
        if self.steps_per_epoch < 1 or self.max_epochs < 1:
            raise ValueError("steps_per_epoch and max_epochs must be >= 1")
        policy = keras.mixed_precision.global_policy().name
        if loss_scale is None:
            loss_scale = 1024.0 if policy == "mixed_float16" else 1.0
        self.loss_scale = float(loss_scale)

        proxy_vars = list(getattr(loss, "proxy_variables", []) or [])
        proxy_ids = {id(v) for v in proxy_vars}
        self.proxy_variables = proxy_vars
        self.other_loss_variables = [v for v in loss.trainable_variables if id(v) not in proxy_ids]
        self.model_variables = list(model.trainable_variables)
        self.variables = self.model_variables + self.other_loss_variables + self.proxy_variables
        embedding_layer = _find_layer(model, "embedding")
        head = {id(v) for v in embedding_layer.trainable_variables} if embedding_layer else set()
        if warmup_epochs and not head:
            raise ValueError("warmup_epochs > 0 needs a layer named 'embedding' in the model")
        self._warmup_mask = [id(v) in head or id(v) in proxy_ids for v in self.variables]

        self.lr_schedule = make_lr_schedule(lr_schedule, learning_rate, lr_decay_rate,
                                            lr_decay_steps, lr_plateau_patience)
        self.proxy_lr_multiplier = float(proxy_lr_multiplier)
        self.optimizer = keras.optimizers.Adam(learning_rate=learning_rate, beta_1=adam_beta_1,
                                               beta_2=adam_beta_2)
        self.optimizer.build(self.model_variables + self.other_loss_variables)
        self.proxy_optimizer = None
        if proxy_vars:
            self.proxy_optimizer = keras.optimizers.Adam(
                learning_rate=learning_rate * self.proxy_lr_multiplier,
                beta_1=adam_beta_1, beta_2=adam_beta_2)
            self.proxy_optimizer.build(proxy_vars)

        transforms = []
        if projection is not None:
            projection.attach(self.model_variables, loss)
            transforms.append(ProximalTerm(projection))
        transforms.extend(
            default_gradient_transforms(model, weight_decay, clip_norm, clip_value)
            if gradient_transforms is None else gradient_transforms
        )
        self.gradient_transforms = transforms

        snapshot = list(model.weights) + list(loss.weights)
        self._snapshot_sources = snapshot
        self.state = _TrainerState(snapshot)
        tracked = dict(model=model, loss=loss, optimizer=self.optimizer, state=self.state,
                       lr_schedule=self.lr_schedule)
        if self.proxy_optimizer is not None:
            tracked["proxy_optimizer"] = self.proxy_optimizer
        if projection is not None:
            tracked["projection"] = projection
        self.checkpoint = tf.train.Checkpoint(**tracked)
        self.manager = (
            tf.train.CheckpointManager(self.checkpoint, checkpoint_dir, max_to_keep=max_checkpoints)
            if checkpoint_dir else None
        )
        self._step_fns = {}

    # --- traced body ------------------------------------------------------------------------
    def _trained_variables(self, warmup):
        return [v for v, keep in zip(self.variables, self._warmup_mask) if keep or not warmup]

    def _replica_gradients(self, images, labels, warmup):
        """Loss terms and the all-reduced, transformed gradients of the global batch."""
        ctx = tf.distribute.get_replica_context()
        num_replicas = tf.cast(ctx.num_replicas_in_sync, tf.float32)
        with tf.GradientTape() as tape:
            embeddings = tf.cast(self.model(images, training=True), tf.float32)
            # Pair losses see the global batch (as if one device had it).
            all_embeddings = ctx.all_gather(embeddings, axis=0)
            all_labels = ctx.all_gather(tf.reshape(labels, [-1]), axis=0)
            terms = self.loss.loss_terms(all_labels, all_embeddings, training=True)
            # Each replica computes the same global loss; dividing by the replica count makes
            # the all-reduced sum of gradients equal the single-device gradient.
            objective = terms["loss"] / num_replicas * self.loss_scale
        variables = self._trained_variables(warmup)
        grads = tape.gradient(objective, variables)
        grads = [tf.zeros_like(v) if g is None else tf.cast(g, tf.float32) / self.loss_scale
                 for g, v in zip(grads, variables)]
        grads = ctx.all_reduce(tf.distribute.ReduceOp.SUM, grads)
        # Before clipping: a NaN gradient with a finite loss (e.g. NaN inputs through a ReLU)
        # must stop training too.
        terms = {**terms, "grad_norm": tf.linalg.global_norm(grads)}
        for transform in self.gradient_transforms:
            grads = transform(grads, variables)
        return {k: tf.cast(v, tf.float32) for k, v in terms.items()}, grads

    def _replica_step(self, images, labels, warmup):
        terms, grads = self._replica_gradients(images, labels, warmup)
        variables = self._trained_variables(warmup)
        num_replicas = tf.cast(tf.distribute.get_replica_context().num_replicas_in_sync, tf.float32)
        learning_rate = self.lr_schedule.at_step(self.state.step)
        # Keras optimizers sum gradients over replicas again: hand each replica its share.
        shares = [g / num_replicas for g in grads]
        proxy_ids = {id(v) for v in self.proxy_variables}
        main = [(g, v) for g, v in zip(shares, variables) if id(v) not in proxy_ids]
        proxy = [(g, v) for g, v in zip(shares, variables) if id(v) in proxy_ids]
        self.optimizer.learning_rate.assign(learning_rate)
        if main:
            self.optimizer.apply_gradients(main)
        if proxy:
            self.proxy_optimizer.learning_rate.assign(learning_rate * self.proxy_lr_multiplier)
            self.proxy_optimizer.apply_gradients(proxy)
        return terms

    def compute_gradients(self, batch, warmup=False):
        """Loss terms and final gradients (after all transforms) of one global batch, no update.

        Args:
          batch: ``(images, labels)`` as the training dataset yields it (it is distributed).
        Returns:
          ``(terms dict of floats, list of numpy gradients in self.variables order)``.
        """
        dataset = tf.data.Dataset.from_tensors(batch)
        distributed = next(iter(self.strategy.experimental_distribute_dataset(dataset)))

        @tf.function
        def run(images, labels):
            return self.strategy.run(self._replica_gradients, args=(images, labels, warmup))

        terms, grads = run(*distributed)
        first = self.strategy.experimental_local_results
        return ({k: float(first(v)[0].numpy()) for k, v in terms.items()},
                [first(g)[0].numpy() for g in grads])

    def _step_fn(self, warmup):
        if warmup not in self._step_fns:
            @tf.function
            def step(batch):
                images, labels = batch
                terms = self.strategy.run(self._replica_step, args=(images, labels, warmup))
                self.state.step.assign_add(1)
                return {k: self.strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None)
                        for k, v in terms.items()}

            self._step_fns[warmup] = step
        return self._step_fns[warmup]

    def train_step(self, batch, warmup=False):
        """One optimization step on a (per-replica) batch; returns the loss terms (floats)."""
        return self._step_fn(warmup)(batch)

    # --- eager shell --------------------------------------------------------------------------
    def validate(self, validation_data):
        """Validation retrieval metrics of the current model (query set = reference set)."""
        embeddings, labels = embed_dataset(self.model, validation_data)
        return metrics_lib.retrieval_metrics(embeddings, labels, recall_at=self.recall_at)

    def _snapshot_best(self):
        for best, v in zip(self.state.best_weights, self._snapshot_sources):
            best.assign(v)

    def _restore_best(self):
        for best, v in zip(self.state.best_weights, self._snapshot_sources):
            v.assign(best)

    def restore(self):
        """Restores the latest checkpoint if there is one; returns its path or None."""
        if self.manager is None or self.manager.latest_checkpoint is None:
            return None
        self.checkpoint.restore(self.manager.latest_checkpoint).assert_existing_objects_matched()
        logging.info("resumed from %s (epoch %d, step %d)", self.manager.latest_checkpoint,
                     int(self.state.epoch.numpy()), int(self.state.step.numpy()))
        return self.manager.latest_checkpoint

    def fit(self, train_dataset_fn, validation_data=None, proxy_pool_fn=None):
        """Trains until early stopping or ``max_epochs``; resumes from the last checkpoint.

        Args:
          train_dataset_fn: ``start_step -> tf.data.Dataset`` of ``(images, labels)`` batches,
            infinite and step-deterministic (a resumed run continues the same stream).
          validation_data: finite dataset of ``(images, labels)``; None disables validation
            (then no early stopping and no CCP schedule: training runs ``max_epochs``).
          proxy_pool_fn: ``(model, projection_index) -> [C, b, D]`` raw pool embeddings for CCP.
        Returns:
          dict with "epochs", "best_metric", "best_epoch", "stop_reason", "history",
          "projections", "seconds".
        """
        started = time.time()
        resumed = self.restore()
        log = _EventLog(self.log_dir, int(self.state.epoch.numpy()) if resumed else 0)
        if self.projection is not None and not resumed:
            event = self.projection.initialize_proxies(proxy_pool_fn, self.model)
            if event is not None:
                log.write({**event, "epoch": 0})
        dataset = train_dataset_fn(int(self.state.step.numpy()))
        iterator = iter(self.strategy.experimental_distribute_dataset(dataset))
        stop_reason = "max_epochs"
        while int(self.state.epoch.numpy()) < self.max_epochs:
            epoch = int(self.state.epoch.numpy()) + 1
            warmup = epoch <= self.warmup_epochs
            means = self._run_epoch(iterator, epoch, warmup)
            record = {"event": "epoch", "epoch": epoch, "step": int(self.state.step.numpy()),
                      **means, "warmup": warmup,
                      "lr": float(self.lr_schedule.at_step(self.state.step).numpy())}
            metric = None
            if validation_data is not None:
                val = self.validate(validation_data)
                metric = float(val["map_at_r"])
                record.update({f"val_{k}": float(v) for k, v in val.items()})
            record["map_at_r"] = metric
            if self.projection is not None and metric is not None and not warmup:
                action, event = self.projection.on_epoch_end(metric, self.model, proxy_pool_fn)
                record["ccp_action"] = action
                if event is not None:
                    log.write({**event, "epoch": epoch})
            if self.projection is not None:
                record["lambda"] = float(self.projection.lambda_t.numpy())
                record["instance"] = int(self.projection.instance.numpy())
            improved = metric is not None and metric > float(self.state.best_metric.numpy()) + self.min_delta
            if improved:
                self.state.best_metric.assign(metric)
                self.state.best_epoch.assign(epoch)
                self.state.wait.assign(0)
                self._snapshot_best()
            elif metric is not None:
                self.state.wait.assign_add(1)
            self.lr_schedule.on_epoch_end(metric)
            self.state.epoch.assign(epoch)
            log.write(record)
            if self.manager is not None:
                self.manager.save(checkpoint_number=epoch)
            if metric is not None and int(self.state.wait.numpy()) >= self.patience:
                stop_reason = "early_stopping"
                break
        if validation_data is not None and int(self.state.best_epoch.numpy()) > 0:
            self._restore_best()
        log.close()
        history = log.epochs
        return {
            "epochs": int(self.state.epoch.numpy()),
            "steps": int(self.state.step.numpy()),
            "best_metric": float(self.state.best_metric.numpy())
            if int(self.state.best_epoch.numpy()) > 0 else None,
            "best_epoch": int(self.state.best_epoch.numpy()),
            "stop_reason": stop_reason,
            "history": history,
            "projections": log.projections,
            "seconds": time.time() - started,
        }

    def _run_epoch(self, iterator, epoch, warmup):
        step_fn = self._step_fn(warmup)
        sums = {}
        bar = None
        if self.progress_bar:
            from tqdm.auto import tqdm

            bar = tqdm(total=self.steps_per_epoch, desc=f"epoch {epoch}", leave=False,
                       unit="step", dynamic_ncols=True)
        try:
            for _ in range(self.steps_per_epoch):
                terms = {k: float(v.numpy()) for k, v in step_fn(next(iterator)).items()}
                if not all(math.isfinite(v) for v in terms.values()):
                    raise FloatingPointError(
                        f"non-finite loss or gradient at epoch {epoch}, step {int(self.state.step.numpy())}: "
                        f"{terms}. Training stopped; the last good checkpoint "
                        f"({self.manager.latest_checkpoint if self.manager else 'none'}) is kept. "
                        "Lower the learning rate or check the inputs."
                    )
                for k, v in terms.items():
                    sums[k] = sums.get(k, 0.0) + v
                if bar is not None:
                    bar.set_postfix({k: f"{v:.4f}" for k, v in terms.items()}, refresh=False)
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        return {k: v / self.steps_per_epoch for k, v in sums.items()}


def _find_layer(model, name):
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if layer.name == name:
            return layer
    return None


class _EventLog:
    """events.jsonl + TensorBoard scalars; on resume, drops records past the checkpoint."""

    def __init__(self, log_dir, resume_epoch):
        self.epochs, self.projections = [], []
        self.path = None
        self.writer = None
        if not log_dir:
            return
        os.makedirs(log_dir, exist_ok=True)
        self.path = os.path.join(log_dir, "events.jsonl")
        kept = []
        if os.path.exists(self.path):
            with open(self.path) as handle:
                for line in handle:
                    record = json.loads(line)
                    if record.get("epoch", 0) <= resume_epoch:
                        kept.append(record)
        with open(self.path, "w") as handle:
            for record in kept:
                handle.write(json.dumps(record) + "\n")
        for record in kept:
            self._remember(record)
        self.writer = tf.summary.create_file_writer(log_dir)

    def _remember(self, record):
        if record.get("event") == "epoch":
            self.epochs.append(record)
        elif record.get("event") == "projection":
            self.projections.append(record)

    def write(self, record):
        self._remember(record)
        if self.path is None:
            return
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        with self.writer.as_default(step=int(record.get("epoch", 0))):
            prefix = "epoch" if record.get("event") == "epoch" else record.get("event", "event")
            for key, value in record.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) \
                        and value is not None and key not in ("epoch",):
                    tf.summary.scalar(f"{prefix}/{key}", value)
        self.writer.flush()

    def close(self):
        if self.writer is not None:
            self.writer.close()
