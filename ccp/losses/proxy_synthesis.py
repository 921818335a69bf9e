"""Proxy Synthesis (Gu et al., "Proxy Synthesis: Learning with Synthetic Classes for Deep
Metric Learning", AAAI 2021) around a proxy loss (SPEC §4b).

One ``lambda ~ Beta(alpha, alpha)`` per call. With ``x = n(E)``, ``w = n(W)`` (Lipschitz
normalization, SPEC §2) and ``S = round(B * mu)`` synthetic pairs, for ``i < S``:
synthetic sample ``n(lambda x_i + (1 - lambda) x_{i-1})`` and synthetic proxy
``n(lambda w[y_i] + (1 - lambda) w[y_{i-1}])`` (index -1 wraps to ``B - 1``; ``w[y]`` the class's
first proxy), both with pseudo label ``C + i`` (the paper's code) or, given
``classes_per_batch = P``, ``C + (i mod P)`` (the reference's). The base proxy loss then runs on
``[x; synthetic samples]`` with labels ``[y; pseudo]`` against ``[w; synthetic proxies]``.

The reference builds Proxy Synthesis only around its ProxyNCA (around ProxyAnchor its code
crashes: no anchor-side labels); around ``ProxyAnchorLoss`` this follows the paper: the synthetic
proxies are extra anchors of the ProxyAnchor loss with their pseudo labels.

The reference's ``C + (i mod P)`` labels assume its batch order (slot ``i mod P`` is one class);
this library's sampler emits class-major batches, so the default is the paper's distinct labels.
"""
import keras
import tensorflow as tf

from ccp import defaults, ops
from ccp.layers import normalize
from ccp.losses.base import MetricLoss, inherited_normalization
from ccp.losses.composition import ForwardsProxies
from ccp.losses.proxy import ProxyAnchorLoss, ProxyNCALoss, proxy_anchor, proxy_nca


def _proxy_nca_loss(loss, x, labels, proxies, proxy_labels):
    pos, _ = ops.pair_masks(labels, proxy_labels)
    return proxy_nca(ops.pairwise_similarities(x, proxies), pos, loss.temperature)


def _proxy_anchor_loss(loss, x, labels, proxies, proxy_labels):
    pos, neg = ops.pair_masks(proxy_labels, labels)  # proxies are the anchors
    return proxy_anchor(ops.pairwise_similarities(proxies, x), pos, neg, loss.margin, loss.alpha)


# Base losses whose math is a pure function of (normalized samples, labels, proxies, labels).
# Others qualify by a ``proxy_loss(x, labels, proxies, proxy_labels)`` method
# (NormalizedSoftmaxLoss, VirtualSoftmaxLoss).
PROXY_LOSS_FUNCTIONS = {ProxyNCALoss: _proxy_nca_loss, ProxyAnchorLoss: _proxy_anchor_loss}


def _proxy_loss_function(loss):
    if type(loss) in PROXY_LOSS_FUNCTIONS:
        return PROXY_LOSS_FUNCTIONS[type(loss)]
    if callable(getattr(loss, "proxy_loss", None)):
        return lambda layer, *args: layer.proxy_loss(*args)
    return None


def beta_sample(alpha, seed):
    """One ``Beta(alpha, alpha)`` draw from a stateless int64 ``[2]`` seed (``G1 / (G1 + G2)``)."""
    gammas = tf.random.stateless_gamma([2], seed=seed, alpha=alpha, dtype=tf.float32)
    return gammas[0] / (gammas[0] + gammas[1])


def synthesize(x, labels, proxies, num_classes, proxies_per_class, mix_rate, mu,
               classes_per_batch=None, normalization=defaults.NORMALIZATION):
    """Synthetic samples, proxies and their pseudo labels.

    Args:
      x: normalized float ``[B, D]``; labels: int32 ``[B]`` (valid class ids).
      proxies: normalized class-major ``[C*K, D]``; mix_rate: float scalar lambda.
      normalization: of the mixtures, a name in ``ccp.layers.NORMALIZATIONS`` (the base
        loss's).
    Returns:
      ``(synthetic samples [S, D], synthetic proxies [S, D], pseudo labels int32 [S])``.
    """
    batch = tf.shape(x)[0]
    count = tf.minimum(tf.cast(tf.round(tf.cast(batch, tf.float32) * mu), tf.int32), batch)
    own = tf.gather(proxies, labels * proxies_per_class)  # each sample's class's first proxy
    lam = tf.cast(mix_rate, x.dtype)
    mixed_x = lam * x + (1.0 - lam) * tf.roll(x, shift=1, axis=0)
    mixed_w = lam * own + (1.0 - lam) * tf.roll(own, shift=1, axis=0)
    index = tf.range(count)
    if classes_per_batch is not None:
        index = index % classes_per_batch
    pseudo = num_classes + index
    return (normalize(mixed_x[:count], normalization),
            normalize(mixed_w[:count], normalization), pseudo)


@keras.saving.register_keras_serializable(package="ccp")
class ProxySynthesisLoss(ForwardsProxies, MetricLoss):
    """Proxy Synthesis around ``base_loss`` (``ProxyNCALoss``, ``ProxyAnchorLoss``,
    ``NormalizedSoftmaxLoss`` or ``VirtualSoftmaxLoss``), whose proxy bank it uses.

    ``layer(labels, embeddings, mix_rate=None)``: ``mix_rate=None`` draws lambda from
    ``stateless_gamma(seed=[seed, counter])`` with ``counter`` a non-trainable weight advanced by
    every draw (checkpointed; the same draw on every replica); a float replays a given lambda.

    Args:
      base_loss: the proxy loss.
      alpha: Beta parameter (0.4); mu: synthetic pairs per batch sample (1.0, in ``[0, 1]``).
      classes_per_batch: None: pseudo labels ``C + i`` (the paper); P: ``C + (i mod P)``.
      seed: int seed of the lambda draws.
    """

    def __init__(self, base_loss, alpha=defaults.PROXY_SYNTHESIS_ALPHA,
                 mu=defaults.PROXY_SYNTHESIS_MU, classes_per_batch=None, seed=0, **kwargs):
        if isinstance(base_loss, dict):
            base_loss = keras.layers.deserialize(base_loss)
        if _proxy_loss_function(base_loss) is None:
            raise TypeError("ProxySynthesisLoss wraps ProxyNCALoss, ProxyAnchorLoss, "
                            "NormalizedSoftmaxLoss or VirtualSoftmaxLoss, got "
                            f"{type(base_loss).__name__}")
        super().__init__(**inherited_normalization(kwargs, base_loss, "ProxySynthesisLoss"))
        self.base_loss = base_loss
        self.alpha, self.mu, self.seed = float(alpha), float(mu), int(seed)
        if self.alpha <= 0:
            raise ValueError(f"ProxySynthesisLoss: alpha must be > 0, got {alpha}")
        if not 0.0 <= self.mu <= 1.0:
            raise ValueError(f"ProxySynthesisLoss: mu must be in [0, 1], got {mu}")
        self.classes_per_batch = None if classes_per_batch is None else int(classes_per_batch)
        if self.classes_per_batch is not None and self.classes_per_batch < 1:
            raise ValueError("ProxySynthesisLoss: classes_per_batch must be >= 1 or None, got "
                             f"{classes_per_batch}")
        self.draw_counter = self.add_weight(
            shape=(), dtype="int64", initializer="zeros", trainable=False, autocast=False,
            aggregation="only_first_replica", name="draw_counter")

    def _wrapped_losses(self):
        return [self.base_loss]

    def draw_mix_rate(self):
        """The next lambda of the seeded stream (advances the counter)."""
        step = tf.convert_to_tensor(self.draw_counter)
        seed = tf.stack([tf.constant(self.seed, tf.int64), step])
        with tf.control_dependencies([seed]):
            self.draw_counter.assign_add(1)
        return beta_sample(self.alpha, seed)

    def call(self, labels, embeddings, mix_rate=None, training=None):
        return self.loss_terms(labels, embeddings, training=training, mix_rate=mix_rate)["loss"]

    def loss_terms(self, labels, embeddings, training=None, mix_rate=None):
        labels, x = self.prepare(labels, embeddings)
        base = self.base_loss
        proxies = base.normalized_proxies()
        lam = self.draw_mix_rate() if mix_rate is None else tf.cast(mix_rate, tf.float32)
        fake_x, fake_w, pseudo = synthesize(x, labels, proxies, base.num_classes,
                                            base.proxies_per_class, lam, self.mu,
                                            self.classes_per_batch, self.normalization)
        loss = _proxy_loss_function(base)(
            base, tf.concat([x, fake_x], axis=0), tf.concat([labels, pseudo], axis=0),
            tf.concat([proxies, fake_w], axis=0), tf.concat([base.proxy_labels, pseudo], axis=0))
        return {"loss": loss, "mix_rate": lam}

    def get_config(self):
        return {**super().get_config(), "base_loss": keras.layers.serialize(self.base_loss),
                "alpha": self.alpha, "mu": self.mu, "classes_per_batch": self.classes_per_batch,
                "seed": self.seed}
