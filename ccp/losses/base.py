"""Base classes of the loss layers (SPEC §4, §10).

Every loss is a ``keras.layers.Layer`` called as ``layer(labels, embeddings) -> scalar``:
labels int ``[B]`` or ``[B, 1]``, embeddings RAW float ``[B, D]``. The layer applies its
``normalization`` to the embeddings and to any proxies itself, the Lipschitz L2 normalization
(SPEC §2) unless ``normalization="l2"`` (plain ``x / ||x||``, SPEC §4c), and computes in float32
even under a mixed-precision policy.
"""
import keras
import tensorflow as tf

from ccp import defaults, keras_compat, ops
from ccp.layers import check_normalization, normalize
from ccp.losses import miners


def mean_of_positive_terms(terms, mask, nonzero_only=True):
    """Sum of the terms that are > 0 (inside ``mask``) over their count (+1e-16), SPEC §4.

    With ``nonzero_only=False`` the sum is divided by the number of entries of ``terms``
    instead (pairs or not): the reference's ``avg_nonzero_only=False`` (``reduce_mean`` of the
    masked terms over the whole matrix).

    Args:
      terms: float ``[...]``; mask: bool ``[...]`` (the pairs/triplets that exist).
    Returns:
      float scalar.
    """
    active = tf.stop_gradient(tf.cast(tf.logical_and(mask, terms > 0.0), terms.dtype))
    if not nonzero_only:
        return tf.reduce_sum(terms * active) / tf.cast(tf.size(terms), terms.dtype)
    return tf.reduce_sum(terms * active) / (tf.reduce_sum(active) + 1e-16)


class MetricLoss(keras.layers.Layer):
    """A loss layer: ``call(labels, embeddings, training=None) -> scalar float32``.

    Subclasses implement :meth:`loss_terms`, returning a dict with the total under "loss" and
    named components (logged by the trainer).

    Args:
      normalization: of the embeddings and proxies, a name in ``ccp.layers.NORMALIZATIONS``:
        "lipschitz" (SPEC §2) or "l2" (the reference's ``lipschitz_cont: false``). A loss that
        wraps another (CCP, XBM, Proxy Synthesis, ...) takes the wrapped loss's
        (:func:`inherited_normalization`).
    """

    def __init__(self, normalization=defaults.NORMALIZATION, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.normalization = check_normalization(normalization, type(self).__name__)

    def __call__(self, labels, embeddings, *args, **kwargs):
        # compile(loss=self) on a model that does not track this layer's variables (proxies)
        # would train them frozen: refuse (ccp.models.MetricModel is the way).
        keras_compat.check_compiled_loss_tracked(self)
        # Keras only accepts tensors positionally; labels often arrive as lists or numpy.
        return super().__call__(tf.convert_to_tensor(labels), tf.convert_to_tensor(embeddings),
                                *args, **kwargs)

    def loss_terms(self, labels, embeddings, training=None):
        raise NotImplementedError

    def call(self, labels, embeddings, training=None):
        return self.loss_terms(labels, embeddings, training=training)["loss"]

    @property
    def proxy_variables(self):
        """Proxy variables (learning-rate multiplier target; not in the proximal term)."""
        return []

    def normalize(self, x):
        """``x [..., D]`` normalized by this loss's ``normalization``."""
        return normalize(x, self.normalization)

    def prepare(self, labels, embeddings):
        """int32 ``[B]`` labels and normalized float32 ``[B, D]`` embeddings."""
        embeddings = tf.cast(embeddings, tf.float32)
        return ops.flatten_labels(labels), self.normalize(embeddings)

    def get_config(self):
        config = super().get_config()
        if self.normalization != defaults.NORMALIZATION:
            config["normalization"] = self.normalization
        return config


def inherited_normalization(kwargs, wrapped, owner):
    """The keyword arguments of a wrapper loss with ``normalization`` set to the wrapped loss's.

    The wrapper normalizes the vectors the wrapped loss's ``compute`` receives, so both must
    agree: a different explicit value is an error naming ``owner``.

    Args:
      kwargs: the wrapper's keyword arguments (not modified).
      wrapped: a ``MetricLoss``, or a list of them (which must agree among themselves).
    """
    members = wrapped if isinstance(wrapped, (list, tuple)) else [wrapped]
    found = {member.normalization for member in members}
    if len(found) > 1:
        raise ValueError(f"{owner}: the wrapped losses normalize differently ({sorted(found)}); "
                         "give them one normalization")
    own = found.pop() if found else defaults.NORMALIZATION
    given = kwargs.get("normalization", own)
    if given != own:
        raise ValueError(f"{owner}: normalization={given!r} differs from the wrapped loss's "
                         f"{own!r}; the wrapper normalizes with the wrapped loss's")
    return {**kwargs, "normalization": own}


class PairLoss(MetricLoss):
    """A pair-based loss with the query/reference signature of DESIGN.md.

    ``compute(embeddings, labels, ref_embeddings=None, ref_labels=None)`` works on
    ALREADY-normalized vectors: without a reference set the batch is compared with itself
    (self-pairs excluded); reference labels < 0 are padding and form no pair.

    Composition switches of the reference's pair-loss head, common to every pair loss:
      miner: None or a ``ccp.losses.miners.Miner`` (or its registered name): keeps a subset of
        the pairs of every call, in the batch term and in CCP's / XBM's reference terms alike.
        Subclasses that build their masks with :meth:`pair_masks` set ``supports_miner``.
      average_nonzero_only: True (the reference's default) averages the hinge terms over the
        non-zero ones; False over all entries of the pair matrix (triplet cube), as the
        reference's ``avg_nonzero_only=False``. Only losses that average over non-zero terms
        (``supports_average_all``) accept False.
    Squared distances are the distance ``ccp.losses.SquaredEuclideanDistance()``; the
    single-proxy variant and intra-proxy pairs are ``ccp.losses.ProxyPairLoss``.
    """

    supports_miner = False
    supports_average_all = False

    def __init__(self, miner=defaults.MINER, average_nonzero_only=defaults.AVERAGE_NONZERO_ONLY,
                 **kwargs):
        super().__init__(**kwargs)
        self.miner = miners.get(miner)
        self.average_nonzero_only = bool(average_nonzero_only)
        name = type(self).__name__
        if self.miner is not None and not self.supports_miner:
            raise ValueError(f"{name} does not take a miner (miner={miner!r}); the pair losses "
                             "that do have supports_miner = True")
        if not self.average_nonzero_only and not self.supports_average_all:
            raise ValueError(f"{name} does not average over non-zero terms, so "
                             "average_nonzero_only=False has no meaning for it")
        if self.miner is not None and self.miner.stochastic:
            # Counter-based draws (as ccp.losses.rho): checkpointed, the same on every replica.
            self.miner_counter = self.add_weight(
                shape=(), dtype="int64", initializer="zeros", trainable=False, autocast=False,
                aggregation="only_first_replica", name="miner_counter")

    @property
    def default_head(self):
        """True when no composition switch is on (CCP's fused C2 path requires it)."""
        return self.miner is None and self.average_nonzero_only

    def pair_masks(self, pdist, embeddings, labels, ref_embeddings=None, ref_labels=None):
        """``ops.pair_masks`` followed by the miner, if any: ``(pos, neg)`` bool ``[N, M]``.

        Args:
          pdist: float ``[N, M]``, the loss's own pair dissimilarity (its distance, or ``-x.y``
            for a cosine loss): what the miner ranks by (SPEC §4c).
          embeddings: normalized queries ``[N, D]``; ref_embeddings ``[M, D]`` or None.
        """
        pos, neg = ops.pair_masks(labels, ref_labels)
        if self.miner is None:
            return pos, neg
        seed = None
        if self.miner.stochastic:
            step = tf.convert_to_tensor(self.miner_counter)
            seed = tf.stack([tf.constant(self.miner.seed, tf.int64), step])
            with tf.control_dependencies([seed]):
                self.miner_counter.assign_add(1)
        pos, neg = self.miner(tf.stop_gradient(pdist), embeddings, ref_embeddings, pos, neg,
                              seed=seed)
        return tf.stop_gradient(pos), tf.stop_gradient(neg)

    def get_config(self):
        config = super().get_config()
        if self.miner is not None:
            config["miner"] = miners.serialize(self.miner)
        if not self.average_nonzero_only:
            config["average_nonzero_only"] = False
        return config

    def compute(self, embeddings, labels, ref_embeddings=None, ref_labels=None):
        raise NotImplementedError

    def loss_terms(self, labels, embeddings, training=None):
        labels, x = self.prepare(labels, embeddings)
        return {"loss": self.compute(x, labels)}
