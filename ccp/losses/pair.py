"""Pair-based losses (SPEC §4): C2, C1, triplet, multi-similarity, margin.

Each has a pure function holding the math (matrices in, scalar out) and a thin layer that
builds distances/similarities and masks. In every matrix rows are anchors (queries) and
columns references.
"""
import keras
import tensorflow as tf

from ccp import defaults, ops
from ccp.losses import distances, miners
from ccp.losses.base import PairLoss, mean_of_positive_terms
from ccp.losses.rho import RhoSwitchMixin


def contrastive(dists, pos_mask, neg_mask, pos_margin, neg_margin, nonzero_only=True):
    """C2 (SPEC §4): mean of non-zero ``relu(d - m+)`` + mean of non-zero ``relu(m- - d)``.

    Args:
      dists: float ``[N, M]`` L2 distances; pos_mask, neg_mask: bool ``[N, M]``.
      nonzero_only: False divides each sum by ``N * M`` (``mean_of_positive_terms``).
    """
    pos = mean_of_positive_terms(dists - pos_margin, pos_mask, nonzero_only)
    neg = mean_of_positive_terms(neg_margin - dists, neg_mask, nonzero_only)
    return pos + neg


def cosine_contrastive(sims, pos_mask, neg_mask, margin, eps=1e-5):
    """C1 (XBM's form, SPEC §4): ``sum relu(1 - eps - s)`` over positives + ``sum relu(s - m)``
    over negatives, divided by the number of anchor rows.

    Args:
      sims: float ``[N, M]`` similarities of normalized vectors.
    """
    pos_terms = (1.0 - eps - sims) * tf.cast(pos_mask, sims.dtype)
    neg_terms = (sims - margin) * tf.cast(neg_mask, sims.dtype)
    total = tf.reduce_sum(tf.nn.relu(pos_terms)) + tf.reduce_sum(tf.nn.relu(neg_terms))
    return total / tf.cast(tf.shape(sims)[0], sims.dtype)


def triplet(dists, pos_mask, neg_mask, margin, nonzero_only=True):
    """All valid triplets ``(a, p, n)``: mean of non-zero ``relu(d(a,p) - d(a,n) + m)`` (SPEC §4).

    Exact, in ``[N, M]`` memory (never the ``[N, M, M]`` triplet cube, which CCP's proxy bank at
    SOP scale would need hundreds of GB for): for anchor ``a`` and positive ``p`` the active
    negatives are those with ``d(a,n) < d(a,p) + m``; with the anchor's negative distances
    sorted, their number is a ``searchsorted`` and their sum a prefix sum, so
    ``sum of active terms = sum_{a,p} count (d(a,p) + m) - prefix[count]``. Gradients reach
    ``d(a,p)`` (times the count) and every active ``d(a,n)`` (through the gathered prefix sums),
    exactly as in the dense form.

    Args:
      dists: float ``[N, M]``; pos_mask, neg_mask: bool ``[N, M]``.
      nonzero_only: False divides the sum by the ``N * M * M`` entries of the triplet cube (the
        reference's ``avg_nonzero_only=False``).
    """
    infinity = tf.constant(float("inf"), dists.dtype)
    # Non-negatives sort to the end as +inf, so a finite threshold never counts them.
    keys = tf.where(neg_mask, tf.stop_gradient(dists), infinity)
    order = tf.argsort(keys, axis=1, stable=True)
    sorted_keys = tf.gather(keys, order, batch_dims=1)
    sorted_neg = tf.gather(tf.where(neg_mask, dists, tf.zeros_like(dists)), order, batch_dims=1)
    prefix = tf.concat([tf.zeros_like(sorted_neg[:, :1]), tf.cumsum(sorted_neg, axis=1)], axis=1)
    counts = tf.searchsorted(sorted_keys, tf.stop_gradient(dists) + margin, side="left")
    counts = tf.where(pos_mask, counts, tf.zeros_like(counts))
    active_sum = tf.gather(prefix, counts, batch_dims=1)
    counts = tf.stop_gradient(tf.cast(counts, dists.dtype))
    total = tf.reduce_sum(counts * (dists + margin) - active_sum)
    if not nonzero_only:
        shape = tf.cast(tf.shape(dists), dists.dtype)
        return total / (shape[0] * shape[1] * shape[1])
    return total / (tf.reduce_sum(counts) + 1e-16)


def multi_similarity(sims, pos_mask, neg_mask, alpha, beta, base, mining=False, epsilon=0.1):
    """Multi-similarity (SPEC §4), averaged over anchor rows.

    Per anchor: ``1/alpha log(1 + sum_pos exp(-alpha (s - base)))
    + 1/beta log(1 + sum_neg exp(beta (s - base)))``. With ``mining`` the MS paper's pair
    mining keeps negatives with ``s > min_pos_s - epsilon`` and positives with
    ``s < max_neg_s + epsilon``.
    """
    if mining:
        pos_mask, neg_mask = miners.multi_similarity(sims, pos_mask, neg_mask, epsilon)
    pos_mask, neg_mask = tf.stop_gradient(pos_mask), tf.stop_gradient(neg_mask)
    # log(1 + sum exp(z)) over a masked row = logsumexp over [0, z_masked...]: stable.
    def soft_plus_sum(z, mask):
        z = tf.where(mask, z, tf.constant(-1e30, z.dtype))
        zero = tf.zeros_like(z[:, :1])
        return tf.reduce_logsumexp(tf.concat([zero, z], axis=1), axis=1)
    pos = soft_plus_sum(-alpha * (sims - base), pos_mask) / alpha
    neg = soft_plus_sum(beta * (sims - base), neg_mask) / beta
    return tf.reduce_mean(pos + neg)


def margin_loss(dists, pos_mask, neg_mask, margin, beta, nonzero_only=True):
    """Margin loss (Wu et al., "Sampling matters"): ``relu(margin + y (d - beta))``.

    Reduced as the reference: mean of the non-zero positive terms + mean of the non-zero
    negative terms (each over its own count + 1e-16, like C2).

    Args:
      dists: float ``[N, M]``; masks bool ``[N, M]``;
      beta: float ``[N, 1]`` (the anchor row's class boundary) or a scalar.
    """
    pos = mean_of_positive_terms(dists - beta + margin, pos_mask, nonzero_only)
    neg = mean_of_positive_terms(beta - dists + margin, neg_mask, nonzero_only)
    return pos + neg


@keras.saving.register_keras_serializable(package="ccp")
class ContrastiveLoss(PairLoss):
    """C2: contrastive loss with two margins (SPEC §4).

    ``distance``: "euclidean" (default), "squared_euclidean", "cosine" (the reference's
    ``-x.y``, SPEC §4c), "snr" or a ``ccp.losses.distances.Distance``; its regularizer (SNR:
    zero-mean) is added on the query embeddings. ``miner`` and
    ``average_nonzero_only``: the composition switches of ``PairLoss``.
    """

    supports_miner = supports_average_all = True

    def __init__(self, pos_margin=0.0, neg_margin=0.5, distance=defaults.DISTANCE, **kwargs):
        super().__init__(**kwargs)
        self.pos_margin, self.neg_margin = float(pos_margin), float(neg_margin)
        self.distance = distances.get(distance)

    def compute(self, embeddings, labels, ref_embeddings=None, ref_labels=None):
        dists = self.distance(embeddings, ref_embeddings)
        pos, neg = self.pair_masks(dists, embeddings, labels, ref_embeddings, ref_labels)
        loss = contrastive(dists, pos, neg, self.pos_margin, self.neg_margin,
                           self.average_nonzero_only)
        return loss + self.distance.regularizer(embeddings)

    def get_config(self):
        return {**super().get_config(), "pos_margin": self.pos_margin,
                "neg_margin": self.neg_margin, "distance": distances.serialize(self.distance)}


@keras.saving.register_keras_serializable(package="ccp")
class CosineContrastiveLoss(PairLoss):
    """C1: cosine contrastive loss of XBM (SPEC §4); takes a ``miner``."""

    supports_miner = True

    def __init__(self, margin=0.5, **kwargs):
        super().__init__(**kwargs)
        self.margin = float(margin)

    def compute(self, embeddings, labels, ref_embeddings=None, ref_labels=None):
        sims = ops.pairwise_similarities(embeddings, ref_embeddings)
        pos, neg = self.pair_masks(-sims, embeddings, labels, ref_embeddings, ref_labels)
        return cosine_contrastive(sims, pos, neg, self.margin)

    def get_config(self):
        return {**super().get_config(), "margin": self.margin}


@keras.saving.register_keras_serializable(package="ccp")
class TripletLoss(RhoSwitchMixin, PairLoss):
    """Triplet loss over all valid triplets, mean over non-zero terms (SPEC §4).

    ``distance``: as ``ContrastiveLoss``. ``p_switch`` > 0 turns on rho-regularization
    (``ccp.losses.rho``, paper value 0.2), drawn from ``switch_seed`` and a checkpointed counter.
    ``miner`` / ``average_nonzero_only``: as ``PairLoss`` (the miner runs before the switch).
    """

    supports_miner = supports_average_all = True

    def __init__(self, margin=0.1, distance=defaults.DISTANCE, p_switch=defaults.RHO_P_SWITCH,
                 switch_seed=0, **kwargs):
        super().__init__(**kwargs)
        self.margin = float(margin)
        self.distance = distances.get(distance)
        self._init_switch(p_switch, switch_seed)

    def compute(self, embeddings, labels, ref_embeddings=None, ref_labels=None):
        dists = self.distance(embeddings, ref_embeddings)
        pos, neg = self.pair_masks(dists, embeddings, labels, ref_embeddings, ref_labels)
        dists, pos, neg = self._maybe_switch(dists, pos, neg)
        loss = triplet(dists, pos, neg, self.margin, self.average_nonzero_only)
        return loss + self.distance.regularizer(embeddings)

    def get_config(self):
        return {**super().get_config(), "margin": self.margin,
                "distance": distances.serialize(self.distance), **self._switch_config()}


@keras.saving.register_keras_serializable(package="ccp")
class MultiSimilarityLoss(PairLoss):
    """Multi-similarity loss; no pair mining by default, as the reference (SPEC §4).

    Always on ``x.y`` (pdist ``-x.y``): the reference forces ``distance_function: cos`` for MS,
    so MS takes no ``distance``; a miner ranks by ``-x.y``.

    ``mining=True`` is the MS paper's mining step (``miners.multi_similarity``); any other
    ``miner`` runs before it.
    """

    supports_miner = True

    def __init__(self, alpha=2.0, beta=40.0, base=0.5, mining=False, mining_epsilon=0.1, **kwargs):
        super().__init__(**kwargs)
        self.alpha, self.beta, self.base = float(alpha), float(beta), float(base)
        self.mining, self.mining_epsilon = bool(mining), float(mining_epsilon)

    def compute(self, embeddings, labels, ref_embeddings=None, ref_labels=None):
        sims = ops.pairwise_similarities(embeddings, ref_embeddings)
        pos, neg = self.pair_masks(-sims, embeddings, labels, ref_embeddings, ref_labels)
        return multi_similarity(sims, pos, neg, self.alpha, self.beta, self.base,
                                self.mining, self.mining_epsilon)

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha, "beta": self.beta, "base": self.base,
                "mining": self.mining, "mining_epsilon": self.mining_epsilon}


@keras.saving.register_keras_serializable(package="ccp")
class MarginLoss(RhoSwitchMixin, PairLoss):
    """Margin loss with a learnable boundary ``beta`` (Wu et al. 2017), all pairs.

    Args:
      margin: alpha, the half-width of the margin.
      beta_init: initial boundary beta.
      num_classes: one beta per class (indexed by the anchor's label) when given, else one.
      nu: weight of the paper's ``nu * beta`` regularizer (mean beta of the anchor rows).
      distance: as ``ContrastiveLoss``.
      p_switch, switch_seed: rho-regularization as ``TripletLoss``.
      miner, average_nonzero_only: as ``PairLoss`` (the miner runs before the switch).
    """

    supports_miner = supports_average_all = True

    def __init__(self, margin=0.2, beta_init=1.2, num_classes=None, nu=0.0,
                 distance=defaults.DISTANCE, p_switch=defaults.RHO_P_SWITCH, switch_seed=0,
                 **kwargs):
        super().__init__(**kwargs)
        self.margin, self.beta_init, self.nu = float(margin), float(beta_init), float(nu)
        self.num_classes = None if num_classes is None else int(num_classes)
        self.distance = distances.get(distance)
        self._init_switch(p_switch, switch_seed)
        self.build()

    def build(self, input_shape=None):
        shape = () if self.num_classes is None else (self.num_classes,)
        self.beta = self.add_weight(shape=shape, name="beta",
                                    initializer=keras.initializers.Constant(self.beta_init))

    def compute(self, embeddings, labels, ref_embeddings=None, ref_labels=None):
        dists = self.distance(embeddings, ref_embeddings)
        pos, neg = self.pair_masks(dists, embeddings, labels, ref_embeddings, ref_labels)
        dists, pos, neg = self._maybe_switch(dists, pos, neg)
        if self.num_classes is None:
            beta = tf.convert_to_tensor(self.beta)
            beta_mean = beta
        else:
            beta_rows = tf.gather(self.beta, tf.maximum(ops.flatten_labels(labels), 0))
            beta = beta_rows[:, None]
            beta_mean = tf.reduce_mean(beta_rows)
        # The paper's nu * beta regularizer, added unconditionally as the reference does.
        loss = (margin_loss(dists, pos, neg, self.margin, beta, self.average_nonzero_only)
                + self.nu * beta_mean)
        return loss + self.distance.regularizer(embeddings)

    def get_config(self):
        return {**super().get_config(), "margin": self.margin, "beta_init": self.beta_init,
                "num_classes": self.num_classes, "nu": self.nu,
                "distance": distances.serialize(self.distance), **self._switch_config()}
