"""Composition pieces of the reference's pair-loss head (its ``GenericPairBasedLoss`` switches).

- squared distances: the distance :class:`SquaredEuclideanDistance` (``ccp.losses.distances``,
  name "squared_euclidean"), for any distance-based
  pair loss (``ContrastiveLoss(distance=SquaredEuclideanDistance())``, triplet, margin, ...);
- the single-proxy "proxy" variant and intra-proxy pairs: :class:`ProxyPairLoss` around any
  pair loss;
- mining and averaging over all terms: the ``miner=`` / ``average_nonzero_only=`` arguments every
  ``PairLoss`` takes (``ccp.losses.base.PairLoss``).
"""
import keras
import tensorflow as tf

from ccp.losses.base import PairLoss, inherited_normalization
from ccp.losses.distances import SquaredEuclideanDistance  # noqa: F401 (defined there, registry)
from ccp.losses.proxy import ProxyLoss


@keras.saving.register_keras_serializable(package="ccp")
class ProxyPairLoss(ProxyLoss):
    """A pair loss between the samples and a learned proxy bank (the reference's
    ``use_proxy=True``): ``L(samples, proxies)`` with samples as anchors (rows), proxies as
    references; no batch-vs-batch term and no projection (contrast ``CCPLoss``).

    With ``intra_proxy_pairs`` (the reference's ``use_intra_proxy_pairs``) the proxies join the
    anchors: ``L([proxies; samples], proxies)``, so proxy-proxy pairs count too. As in the
    reference a proxy is then also paired with itself (a positive at distance 0).

    Args:
      base_loss: a ``PairLoss``.
      num_classes, embedding_size: the bank is ``[num_classes * K, D]``, class-major.
      proxies_per_class: K (1: the reference's single-proxy variant).
      intra_proxy_pairs: add the proxy-proxy pairs.
    """

    def __init__(self, base_loss, num_classes, embedding_size, proxies_per_class=1,
                 intra_proxy_pairs=False, **kwargs):
        if isinstance(base_loss, dict):
            base_loss = keras.layers.deserialize(base_loss)
        if not isinstance(base_loss, PairLoss):
            raise TypeError("ProxyPairLoss wraps a ccp.losses.PairLoss, got "
                            f"{type(base_loss).__name__}")
        kwargs = inherited_normalization(kwargs, base_loss, "ProxyPairLoss")
        super().__init__(num_classes, embedding_size, proxies_per_class=proxies_per_class, **kwargs)
        self.base_loss = base_loss
        self.intra_proxy_pairs = bool(intra_proxy_pairs)
        self.build()

    def loss_terms(self, labels, embeddings, training=None):
        labels, x = self.prepare(labels, embeddings)
        proxies = self.normalized_proxies()
        queries, query_labels = x, labels
        if self.intra_proxy_pairs:
            queries = tf.concat([proxies, x], axis=0)
            query_labels = tf.concat([self.proxy_labels, labels], axis=0)
        return {"loss": self.base_loss.compute(queries, query_labels, proxies, self.proxy_labels)}

    def get_config(self):
        return {**super().get_config(), "base_loss": keras.layers.serialize(self.base_loss),
                "proxies_per_class": self.proxies_per_class,
                "intra_proxy_pairs": self.intra_proxy_pairs}


class ForwardsProxies:
    """The proxy interface (``.proxies``, ``.proxy_labels``, ``proxies_by_class``,
    ``assign_proxies``, ``proxy_variables``) of a wrapper layer, forwarded to the one wrapped
    loss that owns a proxy bank (so CCP's projection and the proxy learning-rate multiplier see
    through the wrapper). Subclasses implement ``_wrapped_losses()``."""

    def _wrapped_losses(self):
        raise NotImplementedError

    def _proxy_owner(self):
        owners = [loss for loss in self._wrapped_losses() if hasattr(loss, "proxies_by_class")]
        if len(owners) != 1:
            raise AttributeError(f"{type(self).__name__} wraps {len(owners)} losses with a proxy "
                                 "bank; the proxy interface needs exactly one")
        return owners[0]

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

    @property
    def proxy_variables(self):
        return [v for loss in self._wrapped_losses() for v in loss.proxy_variables]
