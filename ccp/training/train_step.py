"""The traced train step: replica gradients, all-gather, gradient transforms, optimizer update.

In each replica the embeddings and labels are all-gathered, so pair losses see the global batch
exactly as one device holding it would; every replica then computes the same global loss,
divided by the replica count, so the sum of the replicas' gradients is the single-device
gradient. That sum is taken *before* the gradient transforms (global-norm clipping must see the
true gradient); the optimizer then sums its inputs over replicas once more, so each replica
hands it ``1/num_replicas`` of the transformed gradient. Static shapes and no Python side
effects in the step (TPU-compatible).

Many steps per call: :meth:`TrainStep.run` executes up to ``num_steps`` steps inside one
``tf.function`` (a ``tf.range`` loop), sums the loss terms on the device and stops at the first
step whose loss or gradient norm is not finite, so the host reads the device once per call.
"""
import keras
import tensorflow as tf

from ccp.training import transforms as transforms_lib


def _dense(grad):
    return tf.convert_to_tensor(grad) if isinstance(grad, tf.IndexedSlices) else grad


class TrainStep:
    """The train step of one phase (the variables and optimizer of a :class:`Phase`).

    Args:
      model: keras model, images ``[B/R, ...]`` -> raw embeddings ``[B/R, D]``.
      loss: loss layer with ``loss_terms(labels [B], embeddings [B, D], training) -> dict``.
      phase: ``ccp.training.Phase`` (variables, optimizer, model_training).
      gradient_transforms: list of ``(grads, variables) -> grads`` (global-batch gradients).
      strategy: the ``tf.distribute.Strategy`` the variables were created under.
      step_counter: int64 variable incremented once per step.
      jit_compile: compile each replica's step (forward, gradient, transforms, update) with XLA.
    """

    def __init__(self, model, loss, phase, gradient_transforms, strategy, step_counter,
                 jit_compile=False):
        self.model = model
        self.loss = loss
        self.variables = list(phase.variables)
        self.optimizer = phase.optimizer
        self.model_training = bool(phase.model_training)
        self.gradient_transforms = list(gradient_transforms)
        self.strategy = strategy
        self.step_counter = step_counter
        self.loss_scaled = isinstance(self.optimizer, keras.mixed_precision.LossScaleOptimizer)
        self._replica_fn = (tf.function(self.replica_step, jit_compile=True) if jit_compile
                            else self.replica_step)
        self._single = tf.function(self._single_step)
        self._multi = tf.function(self._many_steps)

    # --- per replica --------------------------------------------------------------------------
    def replica_gradients(self, images, labels):
        """Loss terms and the transformed global-batch gradients (call in a replica context).

        Returns:
          ``(terms, grads)``: dict of float32 scalars (the global batch's loss terms and the raw
          gradient norm ``grad_norm``), and a list aligned with the variables (None where a
          variable has no gradient).
        """
        ctx = tf.distribute.get_replica_context()
        num_replicas = ctx.num_replicas_in_sync
        with tf.GradientTape() as tape:
            embeddings = tf.cast(self.model(images, training=self.model_training), tf.float32)
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
            if self.loss_scaled:
                objective = self.optimizer.scale_loss(objective)
        grads = [None if g is None else tf.cast(_dense(g), tf.float32)
                 for g in tape.gradient(objective, self.variables)]
        if self.loss_scaled:
            scale = tf.cast(self.optimizer.dynamic_scale, tf.float32)
            grads = [None if g is None else g / scale for g in grads]
        if num_replicas > 1:
            present = [i for i, g in enumerate(grads) if g is not None]
            reduced = ctx.all_reduce(tf.distribute.ReduceOp.SUM, [grads[i] for i in present])
            for i, g in zip(present, reduced):
                grads[i] = g
        # The raw global gradient norm: logged, and a NaN gradient with a finite loss (e.g. NaN
        # inputs through a ReLU) stops training too (expected overflows under loss scaling do not).
        terms["grad_norm"] = tf.linalg.global_norm([g for g in grads if g is not None])
        grads = transforms_lib.apply_transforms(self.gradient_transforms, grads, self.variables)
        return terms, grads

    def replica_step(self, images, labels):
        """One optimizer update in a replica context; returns the loss terms."""
        terms, grads = self.replica_gradients(images, labels)
        share = 1.0 / tf.distribute.get_replica_context().num_replicas_in_sync
        if self.loss_scaled:
            # Hand the loss-scale optimizer scaled gradients: it unscales them (exact, a power of
            # two), skips the update when they are not finite and adapts the scale.
            share = share * tf.cast(self.optimizer.dynamic_scale, tf.float32)
        self.optimizer.apply_gradients(
            [(g * share, v) for g, v in zip(grads, self.variables) if g is not None])
        return terms

    # --- traced -------------------------------------------------------------------------------
    def _step(self, iterator):
        images, labels = next(iterator)
        terms = self.strategy.run(self._replica_fn, args=(images, labels))
        self.step_counter.assign_add(1)
        # Every replica holds the same global loss: take it from the first one.
        return {k: self.strategy.experimental_local_results(v)[0] for k, v in terms.items()}

    def _finite(self, terms):
        checked = [v for k, v in sorted(terms.items())
                   if k != "grad_norm" or not self.loss_scaled]
        return tf.reduce_all(tf.math.is_finite(tf.stack(checked)))

    def _single_step(self, iterator):
        terms = self._step(iterator)
        sums = {k: tf.cast(v, tf.float64) for k, v in terms.items()}
        first_bad = tf.where(self._finite(terms), -1, 0)
        return sums, tf.constant(1), first_bad, terms

    def _many_steps(self, iterator, num_steps):
        sums, done, first_bad, terms = self._single_step(iterator)
        for _ in tf.range(num_steps - 1):
            if first_bad >= 0:
                break
            terms = self._step(iterator)
            sums = {k: sums[k] + tf.cast(v, tf.float64) for k, v in terms.items()}
            first_bad = tf.where(self._finite(terms), -1, done)
            done += 1
        return sums, done, first_bad, terms

    def run(self, iterator, num_steps=1):
        """Runs up to ``num_steps`` steps in one call, stopping after a non-finite step.

        Args:
          iterator: a distributed iterator (``ccp.training.distribution.distribute``).
          num_steps: Python int >= 1.
        Returns:
          ``(sums, steps_done, first_non_finite, last_terms)``: float64 sums of the loss terms
          over the steps run, int32 count, int32 index (within this call) of the first step
          whose checked terms were not finite (-1: none), and that last step's float32 terms.
        """
        if num_steps == 1:
            return self._single(iterator)
        return self._multi(iterator, tf.constant(int(num_steps), tf.int32))

    def gradients(self, images, labels):
        """The loss terms and transformed gradients of one distributed batch, without a step.

        Args:
          images, labels: per-replica values of one global batch (e.g.
            ``ccp.training.distribution.single_batch``).
        Returns:
          ``(terms, grads)``: dict of floats, and a list of numpy arrays aligned with the
          variables (zeros where a variable has no gradient).
        """
        def replica(images, labels):
            terms, grads = self.replica_gradients(images, labels)
            return terms, [tf.zeros_like(v) if g is None else g
                           for g, v in zip(grads, self.variables)]

        @tf.function
        def compute(images, labels):
            return self.strategy.run(replica, args=(images, labels))

        terms, grads = compute(images, labels)
        first = self.strategy.experimental_local_results
        return ({k: float(first(v)[0]) for k, v in terms.items()},
                [first(g)[0].numpy() for g in grads])
