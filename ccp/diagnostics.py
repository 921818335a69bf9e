"""Embedding-space diagnostics, computed on demand (no training loop or report calls them; pass
the embeddings to study, e.g. a fold's stored ``test_embeddings.npz``).

``spectral_decay`` is the rho-spectrum of Roth et al. ("Revisiting Training Strategies and
Generalization Performance in Deep Metric Learning", ICML 2020): the singular values of the
embedding matrix, sorted and normalized to sum 1, and their KL divergence from the uniform
distribution, ``rho = KL(U || S) = sum_k 1/K log((1/K) / s_k)``. A small rho is a flat spectrum
(many directions in use: less compression); the paper links a lower rho to better
generalization.
"""
import numpy as np
import tensorflow as tf


def spectral_decay(embeddings, skip=0):
    """Normalized singular-value spectrum of ``embeddings`` and its KL divergence to uniform.

    The matrix is used as given (not centered), like the authors' ``rho_spectrum`` metric; pass
    the embeddings the evaluation uses (e.g. Lipschitz-normalized). ``skip`` drops the largest
    ``skip`` singular values first (their ``rho_spectrum@{skip + 1}``) for a more robust score.

    Args:
      embeddings: float ``[N, D]`` (numpy or tensor).
      skip: int >= 0, leading singular values left out.
    Returns:
      ``(spectrum, rho)``: float64 numpy ``[min(N, D) - skip]`` in descending order summing to 1,
      and a float (``inf`` when a kept singular value is 0).
    """
    x = tf.cast(tf.convert_to_tensor(embeddings), tf.float64)
    if x.shape.rank != 2:
        raise ValueError(f"spectral_decay: embeddings must be [N, D], got shape {x.shape}")
    singular = tf.linalg.svd(x, compute_uv=False).numpy()
    if not 0 <= skip < singular.size:
        raise ValueError(f"spectral_decay: skip must be in [0, {singular.size}), got {skip}")
    kept = singular[skip:]
    total = kept.sum()
    if total <= 0:
        raise ValueError("spectral_decay: the embeddings are all zero (no spectrum)")
    spectrum = kept / total
    uniform = 1.0 / spectrum.size
    with np.errstate(divide="ignore"):
        rho = float(np.sum(uniform * (np.log(uniform) - np.log(spectrum))))
    return spectrum, rho
