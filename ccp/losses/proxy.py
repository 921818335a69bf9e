"""Proxy-based baselines (SPEC §4): ProxyAnchor, ProxyNCA++, SoftTriple.

Each layer owns a proxy bank ``.proxies`` (``[num_classes * K, D]``, class-major: row
``c * K + k`` is proxy ``k`` of class ``c``) and ``.proxy_labels`` (``[num_classes * K]``).
"""
import keras
import tensorflow as tf

from ccp import defaults, ops
from ccp.losses.base import MetricLoss


def proxy_anchor(sims, pos_mask, neg_mask, margin, alpha):
    """ProxyAnchor (SPEC §4): proxies are anchors.

    Args:
      sims: float ``[P, B]`` proxy-vs-sample similarities; masks bool ``[P, B]``.
    """
    def term(z, mask):
        masked = tf.where(mask, z, tf.constant(-1e30, z.dtype))
        zero = tf.zeros_like(masked[:, :1])
        per_proxy = tf.reduce_logsumexp(tf.concat([zero, masked], axis=1), axis=1)  # log(1+sum)
        has = tf.reduce_any(mask, axis=1)
        count = tf.reduce_sum(tf.cast(has, z.dtype))
        return tf.reduce_sum(tf.where(has, per_proxy, 0.0)) / tf.maximum(count, 1.0)

    pos = term(-alpha * (sims - margin), pos_mask)
    neg = term(alpha * (sims + margin), neg_mask)
    return pos + neg


def proxy_nca(sims, pos_mask, temperature):
    """ProxyNCA++ (SPEC §4): ``-log(1e-16 + softmax mass on own-class proxies)``, mean over rows.

    With ``K > 1`` proxies per class the softmax runs over all ``C*K`` proxies and the class
    probability is the mass on the sample's ``K`` own-class proxies (SPEC §4c).

    Args:
      sims: float ``[B, P]`` sample-vs-proxy similarities; pos_mask: bool ``[B, P]``.
    """
    probabilities = tf.nn.softmax(sims / temperature, axis=1)
    own = tf.reduce_sum(probabilities * tf.cast(pos_mask, sims.dtype), axis=1)
    return tf.reduce_mean(-tf.math.log(1e-16 + own))


def soft_triple(sims, labels, num_classes, centers_per_class, lamda, gamma, margin):
    """SoftTriple cross-entropy part (SPEC §4).

    Args:
      sims: float ``[B, C*K]`` class-major center similarities; labels int ``[B]``.
    Returns:
      scalar: mean cross-entropy of ``lamda * (S_c - margin [c = y])``.
    """
    grouped = tf.reshape(sims, [-1, num_classes, centers_per_class])
    weights = tf.nn.softmax(grouped / gamma, axis=2)
    class_sims = tf.reduce_sum(weights * grouped, axis=2)  # [B, C]
    logits = lamda * (class_sims - margin * tf.one_hot(labels, num_classes, dtype=sims.dtype))
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))


def soft_triple_regularizer(centers, num_classes, centers_per_class):
    """SoftTriple center diversity: mean over classes/pairs of ``sqrt(2 + 1e-10 - 2 w.w')``.

    Args:
      centers: normalized float ``[C*K, D]`` class-major.
    """
    if centers_per_class < 2:
        return tf.constant(0.0, centers.dtype)
    grouped = tf.reshape(centers, [num_classes, centers_per_class, -1])
    sims = tf.matmul(grouped, grouped, transpose_b=True)  # [C, K, K]
    upper = tf.linalg.band_part(tf.ones_like(sims[0]), 0, -1) - tf.eye(centers_per_class)
    dists = ops.safe_sqrt(2.0 + 1e-10 - 2.0 * sims)  # no NaN gradient for equal centers
    total = tf.reduce_sum(dists * upper)
    return total / (num_classes * centers_per_class * (centers_per_class - 1))


class ProxyLoss(MetricLoss):
    """A loss owning a class-major proxy bank created at construction time."""

    def __init__(self, num_classes, embedding_size, proxies_per_class=1, seed=None, **kwargs):
        super().__init__(**kwargs)
        if num_classes < 1 or embedding_size < 1 or proxies_per_class < 1:
            raise ValueError(
                f"num_classes, embedding_size and proxies per class must be >= 1, got "
                f"{num_classes}, {embedding_size}, {proxies_per_class}")
        self.num_classes = int(num_classes)
        self.embedding_size = int(embedding_size)
        self.proxies_per_class = int(proxies_per_class)
        self.seed = seed
        # Subclasses call self.build() at the end of __init__ (after adding their sub-layers):
        # Keras locks a layer's state once it is built.

    def build(self, input_shape=None):
        self.proxies = self.add_weight(
            shape=(self.num_classes * self.proxies_per_class, self.embedding_size),
            initializer=keras.initializers.HeNormal(seed=self.seed), name="proxies")
        self.proxy_labels = tf.repeat(tf.range(self.num_classes, dtype=tf.int32),
                                      self.proxies_per_class)

    @property
    def proxy_variables(self):
        return [self.proxies]

    def proxies_by_class(self):
        """``[C, K, D]`` view of the proxy bank."""
        return tf.reshape(tf.convert_to_tensor(self.proxies),
                          [self.num_classes, self.proxies_per_class, self.embedding_size])

    def assign_proxies(self, new):
        """Sets the bank from ``[C, K, D]`` or ``[C*K, D]`` values."""
        new = tf.convert_to_tensor(new, tf.float32)
        expected = (self.num_classes * self.proxies_per_class, self.embedding_size)
        if new.shape.rank == 3:
            new = tf.reshape(new, [-1, new.shape[-1]])
        if tuple(new.shape) != expected:
            raise ValueError(f"proxies must have shape [C, K, D] = [{self.num_classes}, "
                             f"{self.proxies_per_class}, {self.embedding_size}] or "
                             f"{list(expected)}, "
                             f"got {new.shape}")
        self.proxies.assign(new)

    def normalized_proxies(self):
        """The proxy bank ``[C*K, D]`` normalized by the loss's ``normalization``."""
        return self.normalize(tf.convert_to_tensor(self.proxies))

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes,
                "embedding_size": self.embedding_size, "seed": self.seed}


@keras.saving.register_keras_serializable(package="ccp")
class ProxyAnchorLoss(ProxyLoss):
    """ProxyAnchor (Kim et al. 2020), one proxy per class."""

    def __init__(self, num_classes, embedding_size, margin=0.1, alpha=32.0, **kwargs):
        super().__init__(num_classes, embedding_size, proxies_per_class=1, **kwargs)
        self.margin, self.alpha = float(margin), float(alpha)
        self.build()

    def loss_terms(self, labels, embeddings, training=None):
        labels, x = self.prepare(labels, embeddings)
        proxies = self.normalized_proxies()
        sims = ops.pairwise_similarities(proxies, x)  # [P, B]: proxies are the anchors
        pos, neg = ops.pair_masks(self.proxy_labels, labels)
        return {"loss": proxy_anchor(sims, pos, neg, self.margin, self.alpha)}

    def get_config(self):
        return {**super().get_config(), "margin": self.margin, "alpha": self.alpha}


@keras.saving.register_keras_serializable(package="ccp")
class ProxyNCALoss(ProxyLoss):
    """ProxyNCA++ in the reference's form: ProxyNCA with a temperature.

    Args:
      num_classes, embedding_size: the bank is ``[num_classes * K, D]``, class-major.
      temperature: T.
      proxies_per_class: K (the reference's ``proxy_per_class``, 1 by default); with K > 1 a
        sample's class probability is the softmax mass on its class's K proxies (SPEC §4c).
    """

    def __init__(self, num_classes, embedding_size, temperature=defaults.PROXY_NCA_TEMPERATURE,
                 proxies_per_class=defaults.PROXY_NCA_PROXIES_PER_CLASS, **kwargs):
        super().__init__(num_classes, embedding_size, proxies_per_class=proxies_per_class,
                         **kwargs)
        self.temperature = float(temperature)
        if self.temperature <= 0:
            raise ValueError(f"ProxyNCALoss: temperature must be > 0, got {temperature}")
        self.build()

    def loss_terms(self, labels, embeddings, training=None):
        labels, x = self.prepare(labels, embeddings)
        sims = ops.pairwise_similarities(x, self.normalized_proxies())
        pos, _ = ops.pair_masks(labels, self.proxy_labels)
        return {"loss": proxy_nca(sims, pos, self.temperature)}

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature,
                "proxies_per_class": self.proxies_per_class}


@keras.saving.register_keras_serializable(package="ccp")
class SoftTripleLoss(ProxyLoss):
    """SoftTriple (Qian et al. 2019): ``K`` centers per class.

    Args:
      centers_per_class: K.
      lamda: scale of the class logits (the paper's lambda).
      gamma: softmax temperature over a class's centers (``softmax(s / gamma)``).
      tau: weight of the center-diversity regularizer.
      margin: delta, subtracted from the true class's similarity.
    """

    def __init__(self, num_classes, embedding_size, centers_per_class=10, lamda=20.0, gamma=0.1,
                 tau=0.2, margin=0.01, **kwargs):
        super().__init__(num_classes, embedding_size, proxies_per_class=centers_per_class, **kwargs)
        self.lamda, self.gamma = float(lamda), float(gamma)
        self.tau, self.margin = float(tau), float(margin)
        self.build()

    def loss_terms(self, labels, embeddings, training=None):
        labels, x = self.prepare(labels, embeddings)
        centers = self.normalized_proxies()
        sims = ops.pairwise_similarities(x, centers)
        cross_entropy = soft_triple(sims, labels, self.num_classes, self.proxies_per_class,
                                    self.lamda, self.gamma, self.margin)
        regularizer = soft_triple_regularizer(centers, self.num_classes, self.proxies_per_class)
        return {"loss": cross_entropy + self.tau * regularizer, "cross_entropy": cross_entropy,
                "regularizer": regularizer}

    def get_config(self):
        return {**super().get_config(), "centers_per_class": self.proxies_per_class,
                "lamda": self.lamda, "gamma": self.gamma, "tau": self.tau, "margin": self.margin}
