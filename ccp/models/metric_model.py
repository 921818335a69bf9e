"""``MetricModel``: an embedding model and a ccp loss trained by Keras' own ``fit``.

Keras 3's documented way to customize what ``fit`` minimizes is ``Model.compute_loss``; a loss
that owns variables (CCP's proxies, ProxyAnchor's, SoftTriple's centers, XBM's memory) must be
tracked by the model so that ``fit`` differentiates and updates them. :class:`MetricModel`
holds the user's embedder and the loss layer as attributes (so ``trainable_variables``,
``save_weights``, ``get_weights`` and ``keras.callbacks.BackupAndRestore`` include the proxies)
and returns the loss layer's value from ``compute_loss``.

With a CCP projection (:class:`ccp.projection.AlternatingProjection`) the model also holds its
state (``w_prev``, ``lambda_t``, the best snapshot and proxies, the schedule's counters) in its
saved weights, and :meth:`MetricModel.compile` attaches the projection's proximal term to a
:class:`ccp.training.ReferenceAdam`; :class:`ccp.callbacks.AlternatingProjectionCallback` runs
the schedule.
"""
import json

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from ccp.losses.base import MetricLoss

_STATE_PREFIX = "ccp_projection_"


class _WithoutProjectionState:
    """A weights store seen without the projection's entries (what Keras' own loader expects)."""

    def __init__(self, store):
        self.store = store

    def keys(self):
        return [k for k in self.store.keys() if not k.startswith(_STATE_PREFIX)]

    def __getitem__(self, key):
        return self.store[key]

    def __len__(self):
        return len(self.keys())


@keras.saving.register_keras_serializable(package="ccp")
class MetricModel(keras.Model):
    """An embedder trained with a ``ccp.losses`` loss by ``compile`` / ``fit`` / ``evaluate``.

    ``model(images) -> embeddings [B, D]`` (the embedder's raw output); ``fit`` takes
    ``(images, labels int [B])`` batches and minimizes ``loss(labels, embeddings)`` plus the
    embedder's regularization losses, updating the embedder's and the loss's trainable
    variables (proxies included).

    Args:
      embedder: a Keras model ``images [B, ...] -> embeddings [B, D]`` (functional,
        sequential, subclassed, ``keras.applications`` or KerasHub backbone with a head).
      loss: a ``ccp.losses`` loss layer (it owns its variables).
      projection: a :class:`ccp.projection.AlternatingProjection` over
        ``embedder.trainable_variables`` (``proxy_owner=loss`` to rebuild the proxies), or
        None. Its proximal term goes into the optimizer's chain at :meth:`compile`.
      **kwargs: ``keras.Model`` arguments (``name``).

    ``get_config`` holds the embedder and the loss, not the projection: a model saved with
    ``model.save`` reloads for inference (``keras.saving.load_model``) without its CCP state;
    resuming a CCP run goes through its weights (``BackupAndRestore``, ``load_weights``) into a
    model built with the same projection.

    Under a ``tf.distribute`` strategy (build the model and compile inside its scope) the loss
    sees the global batch (embeddings and labels all-gathered, as the Trainer's step), and
    :class:`ccp.training.ReferenceAdam` sums the replicas' gradients before its chain: the
    step equals the single-device step (BatchNorm statistics stay per replica).
    """

    def __init__(self, embedder, loss, projection=None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(loss, MetricLoss):
            raise TypeError(f"MetricModel needs a ccp.losses loss layer, got "
                            f"{type(loss).__name__}")
        if projection is not None and projection.proxy_owner not in (None, loss):
            raise ValueError("the projection rebuilds the proxies of another layer than this "
                             "model's loss: build it with proxy_owner=loss")
        self.embedder = embedder
        self.metric_loss = loss
        self.projection = projection
        if embedder.built:
            self.built = True

    def call(self, inputs, training=None):
        return self.embedder(inputs, training=training)

    def compile(self, optimizer="rmsprop", loss=None, **kwargs):
        """``keras.Model.compile``; the loss is the model's own.

        A :class:`ccp.training.ReferenceAdam` (or any optimizer with ``attach``) is attached to
        the embedder, the loss and the projection here: its chain decays the non-BatchNorm
        weights and the proxies and applies the proximal term.

        Raises:
          ValueError: a ``loss`` other than the model's, or a projection with an optimizer
            that cannot apply its proximal term.
        """
        if loss is not None and loss is not self.metric_loss:
            raise ValueError("MetricModel trains the loss it was built with "
                             "(MetricModel(embedder, loss)); compile() takes no other loss")
        super().compile(optimizer=optimizer, **kwargs)
        # A LossScaleOptimizer (mixed_float16) wraps the one to attach.
        inner = getattr(self.optimizer, "inner_optimizer", self.optimizer)
        if hasattr(inner, "attach"):
            inner.attach(self.embedder, self.metric_loss, self.projection)
        elif self.projection is not None:
            raise ValueError(f"a MetricModel with a CCP projection needs an optimizer that "
                             f"applies its proximal term: ccp.training.ReferenceAdam, got "
                             f"{type(inner).__name__}")

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """``loss(labels, embeddings)`` + the embedder's losses (float32 scalar).

        Args:
          y: labels int ``[B]`` or ``[B, 1]``; y_pred: embeddings ``[B, D]``.
          sample_weight: not supported (a metric loss weighs pairs, not samples).
        """
        if y is None:
            raise ValueError("MetricModel trains on (images, labels) batches; got no labels")
        if sample_weight is not None:
            raise ValueError("MetricModel does not take sample weights")
        labels = tf.reshape(tf.cast(y, tf.int32), [-1])
        embeddings = tf.cast(y_pred, tf.float32)
        context = tf.distribute.get_replica_context()
        replicas = 1 if context is None else context.num_replicas_in_sync
        if replicas > 1:
            # Pair losses must see the global batch: every replica computes the same global
            # loss; its gradient reaches each replica through its own rows.
            embeddings = context.all_gather(embeddings, axis=0)
            labels = context.all_gather(labels, axis=0)
        terms = self.metric_loss.loss_terms(labels, embeddings, training=training)
        total = tf.cast(terms["loss"], tf.float32)
        if self.losses:  # per-replica regularization losses: summed over the replicas
            total += tf.cast(tf.add_n(self.losses), tf.float32)
        return total / replicas  # Keras sums the replicas' gradients

    # --- the projection's state in the model's weights (BackupAndRestore, save_weights) -------
    def save_own_variables(self, store):
        super().save_own_variables(store)
        if self.projection is None:
            return
        for index, variable in enumerate(self.projection.state_variables()):
            store[f"{_STATE_PREFIX}{index}"] = np.asarray(variable.numpy())
        state = json.dumps(self.projection.get_state(), sort_keys=True).encode("utf-8")
        store[f"{_STATE_PREFIX}schedule"] = np.frombuffer(state, np.uint8)

    def load_own_variables(self, store):
        super().load_own_variables(_WithoutProjectionState(store))
        saved = [k for k in store.keys() if k.startswith(_STATE_PREFIX)]
        if self.projection is None:
            if saved:  # e.g. keras.saving.load_model of a CCP model, for inference
                logging.info("MetricModel: the saved CCP projection state is not loaded (this "
                             "model has no projection)")
            return
        variables = self.projection.state_variables()
        if len(saved) != len(variables) + 1:
            raise ValueError(f"these weights hold {len(saved)} CCP projection entries, this "
                             f"model's projection has {len(variables) + 1}: other settings")
        for index, variable in enumerate(variables):
            variable.assign(store[f"{_STATE_PREFIX}{index}"])
        state = np.asarray(store[f"{_STATE_PREFIX}schedule"], np.uint8).tobytes()
        self.projection.set_state(json.loads(state.decode("utf-8")))

    def get_config(self):
        return {**super().get_config(),
                "embedder": keras.saving.serialize_keras_object(self.embedder),
                "loss": keras.saving.serialize_keras_object(self.metric_loss)}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        embedder = keras.saving.deserialize_keras_object(config.pop("embedder"))
        loss = keras.saving.deserialize_keras_object(config.pop("loss"))
        return cls(embedder, loss, **config)
