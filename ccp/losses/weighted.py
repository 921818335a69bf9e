"""WeightedLoss: a weighted sum of loss layers (the reference's ``WeightedLoss`` composition)."""
import keras
import tensorflow as tf

from ccp.losses.base import MetricLoss, PairLoss, inherited_normalization
from ccp.losses.composition import ForwardsProxies


@keras.saving.register_keras_serializable(package="ccp")
class WeightedLoss(ForwardsProxies, PairLoss):
    """``sum_i weights[i] * losses[i](labels, embeddings)``.

    Each member sees the raw embeddings and normalizes them itself. When every member is a
    ``PairLoss`` the sum is one too: ``compute`` is the weighted sum of the members' ``compute``,
    so it can be CCP's base loss or sit inside ``CrossBatchMemory``. The proxy interface forwards
    to the one member with a proxy bank, if exactly one has.

    Args:
      losses: a loss layer or a list of them.
      weights: a float or a list of floats, one per loss.
    """

    def __init__(self, losses, weights, **kwargs):
        single = not isinstance(losses, (list, tuple))
        losses = [losses] if single else list(losses)
        weights = [weights] if not isinstance(weights, (list, tuple)) else list(weights)
        losses = [keras.layers.deserialize(x) if isinstance(x, dict) else x for x in losses]
        if not losses or len(losses) != len(weights):
            raise ValueError(f"WeightedLoss: need one weight per loss, got {len(losses)} losses "
                             f"and {len(weights)} weights")
        for loss in losses:
            if not isinstance(loss, MetricLoss):
                raise TypeError("WeightedLoss sums ccp.losses loss layers, got "
                                f"{type(loss).__name__}")
        super().__init__(**inherited_normalization(kwargs, losses, "WeightedLoss"))
        self.losses_ = losses
        self.weights_ = [float(w) for w in weights]
        self.build()

    def build(self, input_shape=None):
        self.built = True  # the members build themselves

    def _wrapped_losses(self):
        return self.losses_

    def compute(self, embeddings, labels, ref_embeddings=None, ref_labels=None):
        """Weighted sum of the members' ``compute`` (every member must be a ``PairLoss``)."""
        for loss in self.losses_:
            if not isinstance(loss, PairLoss):
                raise TypeError(f"WeightedLoss.compute (CCP's base, XBM's memory term) needs "
                                f"pair losses only; {type(loss).__name__} is not one")
        return tf.add_n([w * loss.compute(embeddings, labels, ref_embeddings, ref_labels)
                         for w, loss in zip(self.weights_, self.losses_)])

    def loss_terms(self, labels, embeddings, training=None):
        terms, total = {}, []
        for index, (w, loss) in enumerate(zip(self.weights_, self.losses_)):
            member = loss.loss_terms(labels, embeddings, training=training)
            total.append(w * member["loss"])
            terms.update({f"{index}_{loss.name}" + ("" if k == "loss" else f"_{k}"): v
                          for k, v in member.items()})
        return {**terms, "loss": tf.add_n(total)}

    def get_config(self):
        return {**super().get_config(),
                "losses": [keras.layers.serialize(x) for x in self.losses_],
                "weights": list(self.weights_)}
