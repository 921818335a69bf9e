"""Cross-batch memory (Wang et al., XBM) around a pair loss or a CCP loss (SPEC §4).

A FIFO queue of the last ``memory_size`` (embedding, label) pairs. After ``start_at`` training
steps the loss is ``batch_weight * L(batch, batch) + memory_weight * L(batch, memory)``; the
memory is just another reference set (empty slots carry label -1 and form no pair). As in the
XBM paper and the reference code, a training step enqueues the batch (detached) *before* the
memory term, so the memory holds the current batch too.
"""
import keras
import tensorflow as tf

from ccp.losses.base import MetricLoss, PairLoss
from ccp.losses.ccp import CCPLoss


@keras.saving.register_keras_serializable(package="ccp")
class CrossBatchMemory(MetricLoss):
    """XBM around ``loss`` (a PairLoss, or a CCPLoss whose base loss meets the memory).

    Args:
      loss: the wrapped loss layer.
      embedding_size: D.
      memory_size: queue length in samples.
      start_at: training steps before the memory term is used.
      batch_weight, memory_weight: weights of the two terms.
    """

    def __init__(self, loss, embedding_size, memory_size, start_at=0, batch_weight=1.0,
                 memory_weight=1.0, **kwargs):
        if isinstance(loss, dict):
            loss = keras.layers.deserialize(loss)
        if not isinstance(loss, (PairLoss, CCPLoss)):
            raise TypeError(f"CrossBatchMemory wraps a PairLoss or CCPLoss, got {type(loss).__name__}")
        super().__init__(**kwargs)
        if memory_size < 1:
            raise ValueError(f"memory_size must be >= 1, got {memory_size}")
        self.loss = loss
        self.embedding_size, self.memory_size = int(embedding_size), int(memory_size)
        self.start_at = int(start_at)
        self.batch_weight, self.memory_weight = float(batch_weight), float(memory_weight)
        self.build()

    def build(self, input_shape=None):
        # Every replica sees the same all-gathered global batch, so all write the same values.
        only_first = tf.VariableAggregation.ONLY_FIRST_REPLICA
        self.memory_embeddings = tf.Variable(
            tf.zeros([self.memory_size, self.embedding_size]), trainable=False,
            aggregation=only_first, name="memory_embeddings")
        self.memory_labels = tf.Variable(
            -tf.ones([self.memory_size], tf.int32), trainable=False, aggregation=only_first,
            name="memory_labels")
        self.write_position = tf.Variable(0, dtype=tf.int32, trainable=False,
                                          aggregation=only_first, name="write_position")
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, aggregation=only_first,
                                name="step")

    # The CCP interface, forwarded to a wrapped CCPLoss (the projection rebuilds its proxies).
    @property
    def proxies(self):
        return self._proxy_owner().proxies

    @property
    def proxy_labels(self):
        return self._proxy_owner().proxy_labels

    def proxies_by_class(self):
        return self._proxy_owner().proxies_by_class()

    def assign_proxies(self, new):
        self._proxy_owner().assign_proxies(new)

    def _proxy_owner(self):
        if not isinstance(self.loss, CCPLoss):
            raise AttributeError("this CrossBatchMemory wraps a loss without proxies")
        return self.loss

    @property
    def proxy_variables(self):
        return self.loss.proxy_variables

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
            tf.tensor_scatter_nd_update(tf.convert_to_tensor(self.memory_embeddings), positions, embeddings))
        self.memory_labels.assign(
            tf.tensor_scatter_nd_update(tf.convert_to_tensor(self.memory_labels), positions, labels))
        self.write_position.assign((self.write_position + batch) % self.memory_size)

    def loss_terms(self, labels, embeddings, training=None):
        labels, x = self.prepare(labels, embeddings)
        batch_terms = self.loss.loss_terms(labels, embeddings, training=training)
        active = tf.cast(self.step >= self.start_at, tf.float32)
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
                "memory_weight": self.memory_weight}
