"""Cross-batch memory (Wang et al., XBM) around a pair loss or a CCP loss (SPEC §4).

A FIFO queue of the last ``memory_size`` (embedding, label) pairs. Once the memory term is on
the loss is ``batch_weight * L(batch, batch) + memory_weight * L(batch, memory)``, before only
``batch_weight * L(batch, batch)``; the memory is just another reference set (empty slots carry
label -1 and form no pair). As in the XBM paper and the reference code, a training step enqueues
the batch (detached) *before* the memory term, so the memory holds the current batch too.

When the memory term starts (counting training steps from 1):
- ``delay_until_full=True`` (default, the reference code's timing): at step ``start_at + M``,
  ``M = ceil(memory_size / batch size)`` the memory's size in batches (the reference's queue
  "fills for M steps after start_at");
- ``delay_until_full=False``: at step ``start_at + 1``, right after ``start_at`` steps.
The queue, its labels, write position and step counter are non-trainable layer weights (in
``layer.weights`` and in checkpoints).
"""
import keras
import tensorflow as tf

from ccp.losses.base import MetricLoss, PairLoss, inherited_normalization
from ccp.losses.ccp import CCPLoss
from ccp.losses.composition import ForwardsProxies


@keras.saving.register_keras_serializable(package="ccp")
class CrossBatchMemory(ForwardsProxies, MetricLoss):
    """XBM around ``loss`` (a PairLoss, or a CCPLoss whose base loss meets the memory).

    Args:
      loss: the wrapped loss layer.
      embedding_size: D.
      memory_size: queue length in samples.
      start_at: training steps before the memory term is used (see ``delay_until_full``).
      batch_weight, memory_weight: weights of the two terms.
      delay_until_full: True: the memory term starts at step ``start_at + M`` (M = memory size
        in batches), as in the reference code; False: at step ``start_at + 1``.
    """

    def __init__(self, loss, embedding_size, memory_size, start_at=0, batch_weight=1.0,
                 memory_weight=1.0, delay_until_full=True, **kwargs):
        if isinstance(loss, dict):
            loss = keras.layers.deserialize(loss)
        if not isinstance(loss, (PairLoss, CCPLoss)):
            raise TypeError(
                f"CrossBatchMemory wraps a PairLoss or CCPLoss, got {type(loss).__name__}")
        super().__init__(**inherited_normalization(kwargs, loss, "CrossBatchMemory"))
        if memory_size < 1:
            raise ValueError(f"memory_size must be >= 1, got {memory_size}")
        self.loss = loss
        self.embedding_size, self.memory_size = int(embedding_size), int(memory_size)
        self.start_at = int(start_at)
        if self.start_at < 0:
            raise ValueError(f"start_at must be >= 0, got {start_at}")
        if not isinstance(delay_until_full, bool):
            raise TypeError(f"delay_until_full must be True or False, got {delay_until_full!r}")
        self.delay_until_full = delay_until_full
        self.batch_weight, self.memory_weight = float(batch_weight), float(memory_weight)
        self.build()

    def build(self, input_shape=None):
        # Every replica sees the same all-gathered global batch, so all write the same values.
        def state(name, shape, dtype, value):
            return self.add_weight(shape=shape, initializer=keras.initializers.Constant(value),
                                   dtype=dtype, trainable=False, autocast=False,
                                   aggregation="only_first_replica", name=name)

        self.memory_embeddings = state("memory_embeddings",
                                       (self.memory_size, self.embedding_size), "float32", 0.0)
        self.memory_labels = state("memory_labels", (self.memory_size,), "int32", -1)
        self.write_position = state("write_position", (), "int32", 0)
        self.step = state("step", (), "int64", 0)
        self.built = True

    def first_memory_step(self, batch_size):
        """The 1-based training step at which the memory term starts (int64 scalar tensor).

        Args:
          batch_size: int scalar, the (global) batch size B; M = ceil(memory_size / B).
        """
        if not self.delay_until_full:
            return tf.constant(self.start_at + 1, tf.int64)
        batch = tf.cast(batch_size, tf.int64)
        return self.start_at + (self.memory_size + batch - 1) // batch

    # The CCP interface (ForwardsProxies), forwarded to a wrapped CCPLoss only: the projection
    # rebuilds its proxies.
    def _wrapped_losses(self):
        return [self.loss]

    def _proxy_owner(self):
        if not isinstance(self.loss, CCPLoss):
            raise AttributeError("this CrossBatchMemory wraps a loss without proxies")
        return self.loss

    def enqueue(self, labels, embeddings):
        """Writes a batch of normalized embeddings into the FIFO (wrapping around).

        Args:
          labels: int32 ``[B]``; embeddings: float32 ``[B, D]``. A batch longer than the memory
          keeps its last ``memory_size`` rows.
        """
        labels = labels[-self.memory_size:]
        embeddings = tf.stop_gradient(embeddings[-self.memory_size:])
        batch = tf.shape(labels)[0]
        positions = ((self.write_position + tf.range(batch)) % self.memory_size)[:, None]
        # Whole-variable assigns: mirrored variables support them in a replica context,
        # scatter updates they do not.
        self.memory_embeddings.assign(
            tf.tensor_scatter_nd_update(tf.convert_to_tensor(self.memory_embeddings), positions,
                                        embeddings))
        self.memory_labels.assign(
            tf.tensor_scatter_nd_update(tf.convert_to_tensor(self.memory_labels), positions,
                                        labels))
        self.write_position.assign((self.write_position + batch) % self.memory_size)

    def loss_terms(self, labels, embeddings, training=None):
        labels, x = self.prepare(labels, embeddings)
        batch_terms = self.loss.loss_terms(labels, embeddings, training=training)
        # This call is training step number self.step + 1 (1-based).
        step = tf.convert_to_tensor(self.step) + 1
        active = tf.cast(step >= self.first_memory_step(tf.shape(labels)[0]), tf.float32)
        if training:
            self.enqueue(labels, x)
            self.step.assign_add(1)
        memory = self.loss.compute(x, labels, tf.convert_to_tensor(self.memory_embeddings),
                                   tf.convert_to_tensor(self.memory_labels))
        memory = memory * active
        total = self.batch_weight * batch_terms["loss"] + self.memory_weight * memory
        terms = {f"batch_{k}" if k != "loss" else "batch": v for k, v in batch_terms.items()}
        return {**terms, "memory": memory, "loss": total}

    def get_config(self):
        return {**super().get_config(), "loss": keras.layers.serialize(self.loss),
                "embedding_size": self.embedding_size, "memory_size": self.memory_size,
                "start_at": self.start_at, "batch_weight": self.batch_weight,
                "memory_weight": self.memory_weight, "delay_until_full": self.delay_until_full}
