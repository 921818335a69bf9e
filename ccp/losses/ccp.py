"""CCPLoss: a pair loss on the batch plus the same loss between samples and a multi-proxy bank.

``L_ccp = pair_weight * L(batch, batch) + proxy_weight * L(batch samples, proxies)`` (SPEC §4),
with ``K`` proxies per class as trainable variables. The proxies are rebuilt by the alternating
projection (``ccp.projection``) from embeddings picked by greedy k-center.
"""
import keras

from ccp.losses.base import PairLoss
from ccp.losses.proxy import ProxyLoss


@keras.saving.register_keras_serializable(package="ccp")
class CCPLoss(ProxyLoss):
    """Chance-constrained proxies around a pair loss.

    Args:
      base_loss: a ``PairLoss`` (C1, C2, triplet, MS, margin).
      num_classes, embedding_size: the proxy bank is ``[num_classes * K, D]``, class-major.
      proxies_per_class: K (8 for CUB/Cars, 4 for SOP/In-shop).
      pair_weight: weight of the batch-vs-batch term (0.1).
      proxy_weight: weight of the sample-vs-proxy term (1.0).
    """

    def __init__(self, base_loss, num_classes, embedding_size, proxies_per_class=8,
                 pair_weight=0.1, proxy_weight=1.0, **kwargs):
        if isinstance(base_loss, dict):
            base_loss = keras.layers.deserialize(base_loss)
        if not isinstance(base_loss, PairLoss):
            raise TypeError(f"CCPLoss wraps a ccp.losses.PairLoss, got {type(base_loss).__name__}")
        super().__init__(num_classes, embedding_size, proxies_per_class=proxies_per_class, **kwargs)
        self.base_loss = base_loss
        self.pair_weight, self.proxy_weight = float(pair_weight), float(proxy_weight)
        self.build()

    def compute(self, embeddings, labels, ref_embeddings=None, ref_labels=None):
        """Base loss between normalized queries and a reference set (used by XBM)."""
        return self.base_loss.compute(embeddings, labels, ref_embeddings, ref_labels)

    def loss_terms(self, labels, embeddings, training=None):
        labels, x = self.prepare(labels, embeddings)
        pair = self.base_loss.compute(x, labels)
        # Samples are the anchors (rows), proxies the references (SPEC §3).
        proxy = self.base_loss.compute(x, labels, self.normalized_proxies(), self.proxy_labels)
        return {"loss": self.pair_weight * pair + self.proxy_weight * proxy,
                "pair": pair, "proxy": proxy}

    def get_config(self):
        config = super().get_config()
        config.update(base_loss=keras.layers.serialize(self.base_loss),
                      proxies_per_class=self.proxies_per_class,
                      pair_weight=self.pair_weight, proxy_weight=self.proxy_weight)
        return config
