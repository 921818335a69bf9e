"""CCPLoss: a pair loss on the batch plus the same loss between samples and a multi-proxy bank.

``L_ccp = pair_weight * L(batch, batch) + proxy_weight * L(batch samples, proxies)`` (SPEC §4),
with ``K`` proxies per class as trainable variables. The proxies are rebuilt by the alternating
projection (``ccp.projection``) from embeddings picked by greedy k-center.

With the Euclidean C2 base (the paper's main loss) both terms and the Lipschitz normalizations
run as one fused computation with a hand-written gradient (:func:`fused_contrastive_ccp`): the
same numbers as composing ``ContrastiveLoss.compute`` twice, in a fraction of the ops.
"""
import keras
import tensorflow as tf

from ccp import defaults, ops
from ccp.losses.base import PairLoss, inherited_normalization
from ccp.losses.pair import ContrastiveLoss
from ccp.losses.proxy import ProxyLoss


def _lipschitz_scale(raw):
    """``[N, D] -> (squared norms [N, 1], 1 / max(||raw||, 1) [N, 1])`` (SPEC §2)."""
    squared_norm = tf.reduce_sum(tf.square(raw), axis=1, keepdims=True)
    return squared_norm, 1.0 / tf.sqrt(tf.maximum(squared_norm, 1.0))


def _contrastive_and_weights(squared, pos, neg, pos_margin, neg_margin):
    """C2 from squared distances, and its gradient w.r.t. them.

    Args:
      squared: float32 ``[N, M]`` squared distances (>= 0); pos, neg: float32 ``[N, M]``
        0/1 masks of the positive and negative pairs.
    Returns:
      ``(loss scalar, weights [N, M])``, ``weights = d loss / d squared``: 0 where the squared
      distance is 0 (the NaN-free sqrt gradient of SPEC §3) or the pair is inactive.
    """
    dists = tf.sqrt(squared)
    pos_terms = tf.nn.relu(dists - pos_margin) * pos
    neg_terms = tf.nn.relu(neg_margin - dists) * neg
    pos_active = tf.cast(pos_terms > 0.0, dists.dtype)
    neg_active = tf.cast(neg_terms > 0.0, dists.dtype)
    pos_count = tf.reduce_sum(pos_active) + 1e-16
    neg_count = tf.reduce_sum(neg_active) + 1e-16
    loss = tf.reduce_sum(pos_terms) / pos_count + tf.reduce_sum(neg_terms) / neg_count
    # d loss / d squared = (d loss / d dists) / (2 d), 0 where d = 0 (sqrt(0) is exactly 0).
    weights = tf.math.divide_no_nan(pos_active / pos_count - neg_active / neg_count, 2.0 * dists)
    return loss, weights


def _proxy_pairs(labels, num_proxies, proxies_per_class):
    """The sample-vs-proxy pairs of a class-major bank (proxy ``c * K + k`` has label ``c``).

    Args:
      labels: int32 ``[B]``, values < 0 mark padding rows; num_proxies: ``P = C * K``.
    Returns:
      ``pos_index`` int32 ``[B, K]`` (the K proxies of each sample's class), ``pos_valid``
      float32 ``[B, K]`` (0 on padding rows), ``pos_flat`` int32 ``[B, K]`` (their positions in
      a flattened ``[P, B]`` matrix), ``neg_mask`` float32 ``[P, B]`` (other classes' proxies).
    """
    k = proxies_per_class
    batch = tf.shape(labels)[0]
    valid = labels >= 0
    pos_index = tf.maximum(labels, 0)[:, None] * k + tf.range(k)[None, :]
    pos_valid = tf.cast(tf.broadcast_to(valid[:, None], tf.shape(pos_index)), tf.float32)
    pos_flat = pos_index * batch + tf.range(batch)[:, None]
    proxy_labels = tf.range(num_proxies) // k
    neg_mask = tf.cast(tf.logical_and(tf.not_equal(proxy_labels[:, None], labels[None, :]),
                                      valid[None, :]), tf.float32)
    return pos_index, pos_valid, pos_flat, neg_mask


def _hinge_weights(active, count, dists, scale):
    """``scale * d(mean of active hinge terms) / d squared distance`` (0 at distance 0)."""
    return scale * tf.math.divide_no_nan(active / count, 2.0 * dists)


def _proxy_term(cross_d, pos_flat, pos_valid, neg_mask, pos_margin, neg_margin):
    """C2 over the sample-vs-proxy pairs, from the distances ``cross_d [P, B]``.

    The positives are gathered (``[B, K]``: K per sample), the negatives read in place.
    Returns ``(value, pos_d [B, K], pos_active [B, K], pos_count, neg_active [P, B],
    neg_count)``.
    """
    neg_terms = tf.nn.relu(neg_margin - cross_d) * neg_mask
    neg_active = tf.cast(neg_terms > 0.0, tf.float32)
    neg_count = tf.reduce_sum(neg_active) + 1e-16
    pos_d = tf.gather(tf.reshape(cross_d, [-1]), pos_flat)
    pos_terms = tf.nn.relu(pos_d - pos_margin) * pos_valid
    pos_active = tf.cast(pos_terms > 0.0, tf.float32)
    pos_count = tf.reduce_sum(pos_active) + 1e-16
    value = tf.reduce_sum(pos_terms) / pos_count + tf.reduce_sum(neg_terms) / neg_count
    return value, pos_d, pos_active, pos_count, neg_active, neg_count


def _proxy_gradients(x, raw_w, norm_w, inv_w, pos_index, pos_dots, pos_w, neg_w, negatives):
    """The sample-vs-proxy part of the gradient, from ``W = d loss / d squared distance``.

    Args:
      x: ``[B, D]`` normalized samples; raw_w ``[P, D]`` raw proxies ``r_j`` with squared norms
        ``norm_w`` and scales ``inv_w = s_j`` (``[P, 1]``); pos_index ``[B, K]`` the positive
        proxies, ``pos_dots [B, K]`` their ``<r_j, x_i>``, ``pos_w [B, K]`` their weights;
        neg_w: a thunk giving the negative pairs' weights ``[P, B]``, called only when the
        Python bool ``negatives`` asks for the negative pairs' part (dense ``[P, B]`` work;
        with C2's margin most batches have no active negative pair, and the caller skips it).
    Returns:
      ``row_sums [B, 1]`` (``sum_j W_ij``), ``pull [B, D]`` (``sum_j W_ij w_j``) and
      ``d_raw_w [P, D]``. A proxy's gradient is linear in its pairs' weights: through SPEC §2's
      Lipschitz gradient, a pair ``(i, j)`` of weight ``W`` adds ``alpha r_j + beta x_i`` with
      ``alpha = W s_j^2 (2 - [|r_j| > 1] 2 (|r_j|^2 s_j^2 - <r_j, x_i> s_j))``,
      ``beta = -2 W s_j``; positive pairs add theirs by a segment sum over the K x B pairs.
    """
    num_proxies, dim = tf.shape(raw_w)[0], tf.shape(x)[1]
    pos_r = tf.gather(raw_w, pos_index)  # [B, K, D]
    pos_s = tf.gather(inv_w[:, 0], pos_index)
    pos_norm = tf.gather(norm_w[:, 0], pos_index)
    row_sums = tf.reduce_sum(pos_w, axis=1, keepdims=True)
    pull = tf.einsum("bk,bkd->bd", pos_w * pos_s, pos_r)
    outside = tf.cast(pos_norm > 1.0, tf.float32)
    alpha = pos_w * tf.square(pos_s) * (
        2.0 - outside * 2.0 * (pos_norm * tf.square(pos_s) - pos_dots * pos_s))
    beta = -2.0 * pos_w * pos_s
    d_raw_w = tf.math.unsorted_segment_sum(
        tf.reshape(alpha[:, :, None] * pos_r + beta[:, :, None] * x[:, None, :], [-1, dim]),
        tf.reshape(pos_index, [-1]), num_proxies)

    if not negatives:
        return row_sums, pull, d_raw_w
    weights = neg_w()
    col_sums = tf.reduce_sum(weights, axis=1, keepdims=True)
    v = tf.matmul(weights, x)  # [P, D]
    # d r_j = r_j (2 c_j - <u_j, g_j>) s_j^2 - 2 s_j v_j, with g_j = 2 (r_j s_j c_j - v_j)
    # and <u_j, g_j> = 2 (|r_j|^2 c_j s_j^2 - <r_j, v_j> s_j) outside the ball, else 0.
    along = 2.0 * (norm_w * col_sums * tf.square(inv_w)
                   - tf.reduce_sum(raw_w * v, axis=1, keepdims=True) * inv_w)
    along = tf.where(norm_w > 1.0, along, tf.zeros_like(along))
    return (row_sums + tf.transpose(tf.reduce_sum(weights, axis=0, keepdims=True)),
            pull + tf.matmul(weights * inv_w, raw_w, transpose_a=True),
            d_raw_w + raw_w * ((2.0 * col_sums - along) * tf.square(inv_w))
            - v * (2.0 * inv_w))


def _lipschitz_backward(grad, x, norm, inv):
    """SPEC §2's gradient through ``x = raw / max(|raw|, 1)``: ``grad [N, D]`` w.r.t. ``x`` ->
    w.r.t. ``raw`` (projection onto the sphere's tangent outside the ball, identity inside)."""
    along = tf.reduce_sum(x * grad, axis=1, keepdims=True)
    along = tf.where(norm > 1.0, along, tf.zeros_like(along))
    return (grad - along * x) * inv


def _c2_ccp_value_and_gradients(labels, raw_x, raw_w, proxies_per_class, pos_margin,
                                neg_margin, pair_weight, proxy_weight, negatives):
    """The values of :func:`fused_contrastive_ccp` and the gradients of its two terms.

    Args:
      negatives: Python bool; False leaves the negative sample-vs-proxy pairs out of the
        gradients (exact when none is inside the margin, which ``any_negative`` reports).
    Returns:
      ``(loss, pair, proxy, d pair / d raw_x [B, D], d proxy / d raw_x [B, D],
      d proxy / d raw_w [P, D], any_negative)``. The pair term does not depend on the
      proxies, and each gradient is linear in the upstream one, so these three tensors give
      every gradient; ``any_negative``: bool scalar, some negative pair is active.
    """
    pair_pos, pair_neg = (tf.cast(m, tf.float32) for m in ops.pair_masks(labels))
    pos_index, pos_valid, pos_flat, neg_mask = _proxy_pairs(labels, tf.shape(raw_w)[0],
                                                            proxies_per_class)
    norm_x, inv_x = _lipschitz_scale(raw_x)
    x = raw_x * inv_x
    squared_x = tf.reduce_sum(tf.square(x), axis=1, keepdims=True)
    norm_w, inv_w = _lipschitz_scale(raw_w)
    batch_sq = tf.nn.relu(squared_x + tf.transpose(squared_x)
                          - 2.0 * tf.matmul(x, x, transpose_b=True))
    batch_sq = tf.linalg.set_diag(batch_sq, tf.zeros(tf.shape(batch_sq)[:1], batch_sq.dtype))
    pair, pair_weights = _contrastive_and_weights(batch_sq, pair_pos, pair_neg, pos_margin,
                                                  neg_margin)
    # Proxies as rows ([P, B]: the faster matmul orientation for a tall bank).
    dots = tf.matmul(raw_w, x, transpose_b=True)  # <r_j, x_i>
    cross_d = tf.sqrt(tf.nn.relu(norm_w * tf.square(inv_w) + tf.transpose(squared_x)
                                 - 2.0 * dots * inv_w))
    proxy, pos_d, pos_active, pos_count, neg_active, neg_count = _proxy_term(
        cross_d, pos_flat, pos_valid, neg_mask, pos_margin, neg_margin)
    loss = pair_weight * pair + proxy_weight * proxy

    batch_w = pair_weights + tf.transpose(pair_weights)  # x is both query and reference
    grad_pair = 2.0 * (x * tf.reduce_sum(batch_w, axis=1, keepdims=True)
                       - tf.matmul(batch_w, x))
    row_sums, pull, d_raw_w = _proxy_gradients(
        x, raw_w, norm_w, inv_w, pos_index, tf.gather(tf.reshape(dots, [-1]), pos_flat),
        _hinge_weights(pos_active, pos_count, pos_d, 1.0),
        lambda: _hinge_weights(neg_active, neg_count, cross_d, -1.0), negatives)
    grad_proxy = 2.0 * (x * row_sums - pull)
    return (loss, pair, proxy, _lipschitz_backward(grad_pair, x, norm_x, inv_x),
            _lipschitz_backward(grad_proxy, x, norm_x, inv_x), d_raw_w, neg_count > 0.5)


# One XLA computation for the values and the gradients: TensorFlow's graph executor runs the
# ~150 small ops one by one, XLA fuses them (BENCHMARKS.md, "CCP loss forward + backward").
# Traced per shape and per hyperparameter set. The negative pairs' dense part is a second
# program chosen by a graph-level tf.cond, not an XLA conditional inside the first: on the CPU
# the conditional alone cost more than the rest of the gradient.
_c2_ccp_compiled = tf.function(_c2_ccp_value_and_gradients, jit_compile=True)


def fused_contrastive_ccp(labels, embeddings, proxies, proxies_per_class, pos_margin,
                          neg_margin, pair_weight, proxy_weight):
    """C2-CCP in one pass with a hand-written gradient (the value of ``CCPLoss`` with a C2 base).

    Lipschitz-normalizes ``embeddings`` and ``proxies`` (SPEC §2), then C2 (SPEC §4) on the
    batch pairs and on the sample-vs-proxy pairs. The normalized proxy bank is never formed:
    with ``w_j = r_j s_j`` (``s_j = 1 / max(||r_j||, 1)``), ``x.w_j = (x.r_j) s_j`` and
    ``|w_j|^2 = |r_j|^2 s_j^2``. The gradient is the chain rule written out: with
    ``W = d loss / d squared distances``, ``d/dx_i = 2 (x_i rowsum_i(W) - sum_j W_ij w_j)``,
    ``d/dw_j = 2 (w_j colsum_j(W) - sum_i W_ij x_i)``, then SPEC §2's Lipschitz gradient, which
    for a proxy folds into ``d/dr_j = r_j a_j - (W^T x)_j b_j`` with per-row ``a_j, b_j``.
    ``W`` is sparse: a sample's positive proxies are its class's K (gathered), and a negative
    proxy counts only inside the margin, so the dense negative part of the gradient runs only
    when some negative pair is active (same numbers either way).

    The values and the gradients of both terms are computed together by one XLA-compiled
    function (the gradient costs a fraction of the forward pass, and one compiled call beats
    two), which a second compiled call with the negative pairs' part replaces when one is
    active; the backward pass only scales them by the upstream gradients.

    Args:
      labels: int32 ``[B]`` (< 0: padding); embeddings: float32 raw ``[B, D]``.
      proxies: float32 raw ``[P, D]``, class-major (``P = C * K``, row ``c * K + k``);
      proxies_per_class: K.
    Returns:
      ``(loss, pair, proxy)`` scalars: ``loss = pair_weight * pair + proxy_weight * proxy``.
    """
    hyperparameters = (int(proxies_per_class), float(pos_margin), float(neg_margin),
                       float(pair_weight), float(proxy_weight))

    @tf.custom_gradient
    def run(raw_x, raw_w):
        loss, pair, proxy, *gradients, any_negative = _c2_ccp_compiled(
            labels, raw_x, raw_w, *hyperparameters, False)
        d_pair_x, d_proxy_x, d_proxy_w = tf.cond(
            any_negative,
            lambda: _c2_ccp_compiled(labels, raw_x, raw_w, *hyperparameters, True)[3:6],
            lambda: tuple(gradients))

        def grad(d_loss, d_pair=None, d_proxy=None):
            pair_scale = pair_weight * d_loss + (0.0 if d_pair is None else d_pair)
            proxy_scale = proxy_weight * d_loss + (0.0 if d_proxy is None else d_proxy)
            return pair_scale * d_pair_x + proxy_scale * d_proxy_x, proxy_scale * d_proxy_w

        return (loss, pair, proxy), grad

    return run(tf.cast(embeddings, tf.float32), tf.cast(proxies, tf.float32))


def _is_euclidean_contrastive(loss):
    """Whether ``loss`` is exactly C2 on the Euclidean distance of Lipschitz-normalized vectors
    (no added regularizer, no miner, the default reduction): what the fused path computes."""
    if type(loss) is not ContrastiveLoss or not loss.default_head:
        return False
    if loss.normalization != defaults.NORMALIZATION:
        return False
    distance = getattr(loss, "distance", None)
    return distance is None or getattr(distance, "name", None) == "euclidean"


@keras.saving.register_keras_serializable(package="ccp")
class CCPLoss(ProxyLoss):
    """Chance-constrained proxies around a pair loss.

    Args:
      base_loss: a ``PairLoss`` (C1, C2, triplet, MS, margin).
      num_classes, embedding_size: the proxy bank is ``[num_classes * K, D]``, class-major.
      proxies_per_class: K (8 for CUB/Cars, 4 for SOP/In-shop).
      pair_weight: weight of the batch-vs-batch term (0.1).
      proxy_weight: weight of the sample-vs-proxy term (1.0).
    Samples and proxies are normalized by the base loss's ``normalization``. Only C2 on the
    Euclidean distance with the Lipschitz normalization and no miner takes the fused path;
    every other head (``distance="cosine"``, ``normalization="l2"``, a miner, ...) composes the
    base loss's ``compute`` twice.
    """

    def __init__(self, base_loss, num_classes, embedding_size, proxies_per_class=8,
                 pair_weight=0.1, proxy_weight=1.0, **kwargs):
        if isinstance(base_loss, dict):
            base_loss = keras.layers.deserialize(base_loss)
        if not isinstance(base_loss, PairLoss):
            raise TypeError(f"CCPLoss wraps a ccp.losses.PairLoss, got {type(base_loss).__name__}")
        kwargs = inherited_normalization(kwargs, base_loss, "CCPLoss")
        super().__init__(num_classes, embedding_size, proxies_per_class=proxies_per_class, **kwargs)
        self.base_loss = base_loss
        self.pair_weight, self.proxy_weight = float(pair_weight), float(proxy_weight)
        self.build()

    def compute(self, embeddings, labels, ref_embeddings=None, ref_labels=None):
        """Base loss between normalized queries and a reference set (used by XBM)."""
        return self.base_loss.compute(embeddings, labels, ref_embeddings, ref_labels)

    def loss_terms(self, labels, embeddings, training=None):
        if _is_euclidean_contrastive(self.base_loss):
            loss, pair, proxy = fused_contrastive_ccp(
                ops.flatten_labels(labels), embeddings, tf.convert_to_tensor(self.proxies),
                self.proxies_per_class, self.base_loss.pos_margin, self.base_loss.neg_margin,
                self.pair_weight, self.proxy_weight)
            return {"loss": loss, "pair": pair, "proxy": proxy}
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
