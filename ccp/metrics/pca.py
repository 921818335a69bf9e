"""PCA of embeddings before evaluation, as the reference's evaluation can apply it. numpy, float64
(``ccp.metrics.pca_fit``, ``pca_transform``, ``pca_project``).

Centred PCA to ``dim`` components fitted on the reference (gallery) set, then applied to queries
and references alike. The reference fits ``sklearn.decomposition.PCA(svd_solver="full")`` on the
embeddings it evaluates (for self-retrieval the reference set is that set), before normalizing
them.
"""
import numpy as np


def pca_fit(reference, dim):
    """Fits PCA on ``reference [N, D]``: returns ``(mean [D], components [dim, D])`` float64.

    Raises:
      ValueError: dim is not in 1..min(N, D).
    """
    reference = np.asarray(reference, dtype=np.float64)
    if reference.ndim != 2:
        raise ValueError(f"pca_fit: reference must be [N, D], got shape {reference.shape}")
    if isinstance(dim, bool) or int(dim) != dim or not 1 <= dim <= min(reference.shape):
        raise ValueError(f"PCA dimension (--eval_pca_dim) must be an integer in "
                         f"1..{min(reference.shape)} (reference rows {reference.shape[0]}, "
                         f"embedding dims {reference.shape[1]}), got {dim!r}")
    mean = reference.mean(axis=0)
    _, _, vt = np.linalg.svd(reference - mean, full_matrices=False)
    return mean, vt[:int(dim)]


def pca_transform(embeddings, mean, components):
    """``[N, D] -> [N, dim]``: ``(x - mean) @ components.T`` in float64."""
    return (np.asarray(embeddings, dtype=np.float64) - mean) @ components.T


def pca_project(embeddings, dim, reference=None):
    """PCA of ``embeddings [N, D]`` to ``[N, dim]``, fitted on ``reference`` (default: itself)."""
    mean, components = pca_fit(embeddings if reference is None else reference, dim)
    return pca_transform(embeddings, mean, components)
