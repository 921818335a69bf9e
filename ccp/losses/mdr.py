"""Multi-level distance regularization (Kim & Park, "MDR: Multi-level Distance Regularization for
Deep Metric Learning", AAAI 2021), SPEC §4b.

The reference's form: no normalization of the raw embeddings ``E [B, D]``;
``d`` = pairwise L2 distances ``[B, B]`` (zero diagonal); ``mu = mean(d)`` over all ``B^2``
entries (differentiable), ``sigma = std(d)`` (population, no gradient); running statistics
``M, S`` (no gradient): on the first call ``M = mu, S = sigma``, later
``M = (1 - momentum) mu + momentum M`` (same for ``S``), the new values used in the same call.
Learnable levels ``l`` (init ``(-3, 0, 3)``)::

    L = base(labels, E / mu) + weight * mean_ij min_k |(d_ij - M) / S - l_k|
        + level_penalty * sum_k l_k^2

The reference turns its base loss's embedding normalization off: a ``PairLoss`` base here gets
``E / mu`` through ``compute`` unnormalized, exactly so; any other base (proxy losses, CCP) is
called as a layer and normalizes ``E / mu`` and its proxies itself. The reference needs its model
wrapper for the levels; here they are a weight of this layer. The reference also measures ``d``
with its base loss's dissimilarity, which for its cosine bases (MS, C1, the proxy losses) is
``-x.y`` of the raw embeddings (``mu`` can then be negative and flip ``E / mu``); here ``d`` is
always the L2 distance, as in the paper and SPEC §4b.
"""
import keras
import tensorflow as tf

from ccp import defaults, ops
from ccp.losses.base import MetricLoss, PairLoss, inherited_normalization
from ccp.losses.composition import ForwardsProxies


def mdr_regularizer(dists, mean, std, levels):
    """``mean_ij min_k |(d_ij - mean) / std - l_k|`` over all entries.

    Args:
      dists: float ``[B, B]``; mean, std: scalars; levels: float ``[L]``.
    """
    normalized = (dists - mean) / std
    return tf.reduce_mean(tf.reduce_min(tf.abs(normalized[..., None] - levels), axis=-1))


@keras.saving.register_keras_serializable(package="ccp")
class MultiLevelDistanceRegularization(ForwardsProxies, MetricLoss):
    """MDR added to ``base_loss`` (any loss layer).

    The running mean/std and whether they are initialized are non-trainable weights (in
    checkpoints); they advance on every call except ``training=False``. The levels are a
    trainable weight ``levels [L]``.

    Args:
      base_loss: the loss layer regularized.
      weight: MDR weight (1.0); level_penalty: nu of ``sum l^2`` (0.01);
      momentum: of the running statistics (0.9); levels: initial levels.
    """

    def __init__(self, base_loss, weight=defaults.MDR_WEIGHT,
                 level_penalty=defaults.MDR_LEVEL_PENALTY, momentum=defaults.MDR_MOMENTUM,
                 levels=defaults.MDR_LEVELS, **kwargs):
        if isinstance(base_loss, dict):
            base_loss = keras.layers.deserialize(base_loss)
        if not isinstance(base_loss, MetricLoss):
            raise TypeError("MultiLevelDistanceRegularization wraps a ccp.losses loss layer, got "
                            f"{type(base_loss).__name__}")
        super().__init__(**inherited_normalization(kwargs, base_loss,
                                                   "MultiLevelDistanceRegularization"))
        self.base_loss = base_loss
        self.weight, self.level_penalty = float(weight), float(level_penalty)
        self.momentum = float(momentum)
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"MultiLevelDistanceRegularization: momentum must be in [0, 1), "
                             f"got {momentum}")
        self.initial_levels = tuple(float(v) for v in levels)
        if not self.initial_levels:
            raise ValueError("MultiLevelDistanceRegularization: levels must not be empty")
        self.build()

    def build(self, input_shape=None):
        def state(name, dtype):
            return self.add_weight(shape=(), dtype=dtype, initializer="zeros", trainable=False,
                                   autocast=False, aggregation="only_first_replica", name=name)

        self.levels = self.add_weight(
            shape=(len(self.initial_levels),), name="levels",
            initializer=keras.initializers.Constant(list(self.initial_levels)))
        self.running_mean = state("running_mean", "float32")
        self.running_std = state("running_std", "float32")
        self.initialized = state("initialized", "int32")
        self.built = True

    def _wrapped_losses(self):
        return [self.base_loss]

    def loss_terms(self, labels, embeddings, training=None):
        raw = tf.cast(embeddings, tf.float32)
        dists = ops.pairwise_distances(raw)
        mean = tf.reduce_mean(dists)
        std = tf.stop_gradient(tf.math.reduce_std(dists))
        batch_mean = tf.stop_gradient(mean)
        started = tf.convert_to_tensor(self.initialized) > 0
        keep = self.momentum
        running_mean = tf.where(started, (1.0 - keep) * batch_mean + keep * self.running_mean,
                                batch_mean)
        running_std = tf.where(started, (1.0 - keep) * std + keep * self.running_std, std)
        if training is not False:
            self.running_mean.assign(running_mean)
            self.running_std.assign(running_std)
            self.initialized.assign(1)
        levels = tf.convert_to_tensor(self.levels)
        regularizer = mdr_regularizer(dists, running_mean, running_std, levels)
        scaled = raw / mean
        if isinstance(self.base_loss, PairLoss):
            base = self.base_loss.compute(scaled, ops.flatten_labels(labels))
        else:
            base = self.base_loss.loss_terms(labels, scaled, training=training)["loss"]
        penalty = tf.reduce_sum(tf.square(levels))
        loss = base + self.weight * regularizer + self.level_penalty * penalty
        return {"loss": loss, "base": base, "mdr": regularizer, "level_penalty": penalty}

    def get_config(self):
        return {**super().get_config(), "base_loss": keras.layers.serialize(self.base_loss),
                "weight": self.weight, "level_penalty": self.level_penalty,
                "momentum": self.momentum, "levels": list(self.initial_levels)}
