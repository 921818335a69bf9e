"""Distances the distance-based pair losses compose with (C2, triplet, margin, ranked list).

A distance is a small serializable object: ``distance(a, b=None) -> [N, M]`` (rows anchors,
columns references, ``b=None`` meaning the anchors are their own references with a zero
diagonal) and ``distance.regularizer(embeddings [B, D]) -> scalar`` (a term the loss adds on its
query embeddings; 0 for the Euclidean distances). Losses take
``distance="euclidean" | "squared_euclidean" | "cosine" | "snr"`` or an instance; :func:`get` is
the one place that resolves a name.
"""
import keras
import tensorflow as tf

from ccp import defaults, ops
from ccp.losses import registered


class Distance(registered.Component):
    """Base class: subclasses implement ``__call__`` and may override ``regularizer``."""

    name = None

    def __call__(self, a, b=None):
        raise NotImplementedError

    def regularizer(self, embeddings):
        """Scalar added to the loss for the query embeddings ``[B, D]``."""
        return tf.constant(0.0, tf.convert_to_tensor(embeddings).dtype)


@keras.saving.register_keras_serializable(package="ccp")
class EuclideanDistance(Distance):
    """L2 distance ``||a_i - b_j||`` with the NaN-free gradient at 0 (SPEC §3)."""

    name = "euclidean"

    def __call__(self, a, b=None):
        return ops.pairwise_distances(a, b)


@keras.saving.register_keras_serializable(package="ccp")
class SquaredEuclideanDistance(Distance):
    """Squared L2 distance ``||a_i - b_j||^2`` (the reference's ``squared_distance=True``)."""

    name = "squared_euclidean"

    def __call__(self, a, b=None):
        return ops.pairwise_distances(a, b, squared=True)


@keras.saving.register_keras_serializable(package="ccp")
class CosineDistance(Distance):
    """The reference's ``distance_function: cos`` (SPEC §4c): ``pdist(a_i, b_j) = -(a_i . b_j)``
    of the normalized vectors, in ``[-1, 1]``.

    Not a true cosine when a norm is < 1 (the Lipschitz normalization leaves short vectors as
    they are), and no shift: a loss applies its own formula and margins to ``-x.y`` unchanged
    (C2's ``relu(m- - pdist)`` with ``m- = 0.5`` is active for every negative pair with
    ``x.y > -0.5``).
    """

    name = "cosine"

    def __call__(self, a, b=None):
        return -ops.pairwise_similarities(a, b)


@keras.saving.register_keras_serializable(package="ccp")
class SNRDistance(Distance):
    """SNR distance ``var(b_j - a_i) / var(a_i)`` (Yuan et al., CVPR 2019), ``ops.snr_distances``.

    Args:
      regularization_weight: lambda of the paper's zero-mean regularizer
        ``lambda * mean_i |sum_k x_ik|`` on the query embeddings (PML's ``ZeroMeanRegularizer``);
        0 disables it.
    """

    name = "snr"

    def __init__(self, regularization_weight=defaults.SNR_REGULARIZATION_WEIGHT):
        self.regularization_weight = float(regularization_weight)
        if self.regularization_weight < 0:
            raise ValueError("SNRDistance: regularization_weight must be >= 0, got "
                             f"{regularization_weight}")

    def __call__(self, a, b=None):
        return ops.snr_distances(a, b)

    def regularizer(self, embeddings):
        embeddings = tf.convert_to_tensor(embeddings)
        zero_mean = tf.reduce_mean(tf.abs(tf.reduce_sum(embeddings, axis=1)))
        return self.regularization_weight * zero_mean

    def get_config(self):
        return {"regularization_weight": self.regularization_weight}


REGISTRY = {cls.name: cls for cls in (EuclideanDistance, SquaredEuclideanDistance, CosineDistance,
                                      SNRDistance)}


def get(identifier):
    """A :class:`Distance` from a registered name, a serialized dict or an instance."""
    return registered.resolve(identifier, REGISTRY, Distance, "distance")


def serialize(distance):
    """The config form of a distance (what the losses store in ``get_config``)."""
    return keras.saving.serialize_keras_object(distance)
