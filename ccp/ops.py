"""Small pure tensor functions: distances, similarities and pair masks (SPEC §3).

Conventions shared by losses and metrics ("one query/reference signature"):
``a`` are query vectors ``[N, D]``; ``b`` are reference vectors ``[M, D]``. When the reference set
is omitted (``b is None`` / ``ref_labels is None``) the query set is its own reference set and a
sample is never paired with itself. Labels below zero mark padding rows (an empty memory slot, a
padded batch): they are neither positive nor negative for anything.
"""
import tensorflow as tf


def safe_sqrt(x):
    """Element-wise sqrt whose gradient is 0 (not inf/NaN) where ``x <= 0``.

    Args:
      x: float tensor of any shape, expected >= 0.
    Returns:
      ``sqrt(max(x, 0))``, same shape and dtype.
    """
    positive = x > 0.0
    # Double-where: the untaken branch must also have a finite gradient.
    safe_x = tf.where(positive, x, tf.ones_like(x))
    return tf.where(positive, tf.sqrt(safe_x), tf.zeros_like(x))


def pairwise_squared_distances(a, b=None):
    """Squared L2 distances ``relu(|a|^2 + |b|^2 - 2 a.b)``.

    Args:
      a: float ``[N, D]``.
      b: float ``[M, D]`` or None (then ``b = a`` and the diagonal is exactly 0).
    Returns:
      float ``[N, M]`` (``[N, N]`` when ``b`` is None).
    """
    a = tf.convert_to_tensor(a)
    same_set = b is None
    b = a if same_set else tf.convert_to_tensor(b, dtype=a.dtype)
    sq_a = tf.reduce_sum(tf.square(a), axis=1, keepdims=True)
    sq_b = tf.reduce_sum(tf.square(b), axis=1, keepdims=True)
    sq = tf.nn.relu(sq_a + tf.transpose(sq_b) - 2.0 * tf.matmul(a, b, transpose_b=True))
    if same_set:
        # Rounding leaves ~1e-7 on the diagonal; a point is at distance 0 from itself.
        sq = tf.linalg.set_diag(sq, tf.zeros(tf.shape(sq)[:1], dtype=sq.dtype))
    return sq


def pairwise_distances(a, b=None, squared=False):
    """L2 distances between rows, NaN-free gradient at zero distance (SPEC §3).

    Args:
      a: float ``[N, D]``.
      b: float ``[M, D]`` or None (distances within ``a``).
      squared: return squared distances.
    Returns:
      float ``[N, M]``.
    """
    sq = pairwise_squared_distances(a, b)
    return sq if squared else safe_sqrt(sq)


def pairwise_similarities(a, b=None):
    """Dot-product similarities ``a.b`` (cosine for normalized rows).

    Args:
      a: float ``[N, D]``; b: float ``[M, D]`` or None (``b = a``).
    Returns:
      float ``[N, M]``.
    """
    a = tf.convert_to_tensor(a)
    b = a if b is None else tf.convert_to_tensor(b, dtype=a.dtype)
    return tf.matmul(a, b, transpose_b=True)


def flatten_labels(labels):
    """``[N]`` or ``[N, 1]`` integer labels -> int32 ``[N]``."""
    return tf.reshape(tf.cast(labels, tf.int32), [-1])


def pair_masks(labels, ref_labels=None):
    """Positive and negative pair masks between queries and references (SPEC §3).

    Args:
      labels: int ``[N]`` or ``[N, 1]`` query labels; values < 0 mark padding rows.
      ref_labels: int ``[M]`` reference labels, or None when the queries are their own
        references (then the diagonal is never a positive pair).
    Returns:
      ``(pos, neg)``, two bool ``[N, M]`` tensors: ``pos[i, j]`` iff same label (and ``i != j``
      in the same-set case), ``neg[i, j]`` iff different labels; both False for padding.
    """
    labels = flatten_labels(labels)
    same_set = ref_labels is None
    ref = labels if same_set else flatten_labels(ref_labels)
    valid = tf.logical_and(labels[:, None] >= 0, ref[None, :] >= 0)
    equal = tf.equal(labels[:, None], ref[None, :])
    pos = tf.logical_and(equal, valid)
    neg = tf.logical_and(tf.logical_not(equal), valid)
    if same_set:
        n = tf.shape(labels)[0]
        pos = tf.logical_and(pos, tf.logical_not(tf.eye(n, dtype=tf.bool)))
    return pos, neg


def snr_distances(a, b=None):
    """Signal-to-noise-ratio distances (Yuan et al., CVPR 2019): ``var(b_j - a_i) / var(a_i)``.

    The variances are over the ``D`` features of one vector (population variance; the ratio does
    not depend on the normalizer). Rows are anchors: the distance is NOT symmetric, the anchor's
    own variance is the signal. The noise variance is
    ``(|a_i - mean(a_i)|^2 + |b_j - mean(b_j)|^2 - 2 <centered a_i, centered b_j>) / D``,
    clamped at 0, so ``[N, M]`` memory suffices.

    Args:
      a: float ``[N, D]`` anchors.
      b: float ``[M, D]`` references, or None (``b = a``; the diagonal is exactly 0).
    Returns:
      float ``[N, M]``.
    """
    a = tf.convert_to_tensor(a)
    same_set = b is None
    b = a if same_set else tf.convert_to_tensor(b, dtype=a.dtype)
    a_centered = a - tf.reduce_mean(a, axis=1, keepdims=True)
    b_centered = b - tf.reduce_mean(b, axis=1, keepdims=True)
    # Centered vectors: a zero-mean difference, so var(b_j - a_i) = |centered diff|^2 / D.
    noise = pairwise_squared_distances(a_centered, None if same_set else b_centered)
    signal = tf.reduce_sum(tf.square(a_centered), axis=1, keepdims=True)
    # The 1/D factors cancel; a constant anchor vector (no signal) must not divide by zero.
    tiny = tf.constant(1e-12, a.dtype)
    return noise / tf.maximum(signal, tiny)
