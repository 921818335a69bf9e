"""Training health: recognize a collapsed model at an epoch end (issue 10 item 5).

A learning rate far too large typically drives the weights to a point where the loss is stuck at
its margin and the gradient vanishes (saturated normalization, dead ReLUs), or where every image
maps to the same embedding. Training on would waste the run and feed a meaningless pool to CCP's
projection, so the Trainer stops with :class:`TrainingCollapsed` before saving that epoch.
"""
import numpy as np

# A vanished gradient: the epoch's mean global gradient norm below this while the loss is not
# ~0 (a loss of 0 with no gradient is a solved batch, not a collapse).
GRAD_NORM_FLOOR = 1e-8
LOSS_FLOOR = 1e-4
# Coinciding embeddings: mean distance of the Lipschitz-normalized validation embeddings to
# their centroid below this.
SPREAD_FLOOR = 1e-6


class TrainingCollapsed(RuntimeError):
    """The model collapsed; the message names the epoch, the symptom and the likely cause."""


def embedding_spread(embeddings):
    """Mean L2 distance of Lipschitz-normalized embeddings to their centroid (float64).

    Args:
      embeddings: float ``[N, D]`` raw embeddings.
    Returns:
      float >= 0; 0 when all rows coincide after normalization.
    """
    x = np.asarray(embeddings, np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = x / np.maximum(norms, 1.0)  # n(x) = x / max(||x||, 1), SPEC §2
    return float(np.linalg.norm(x - x.mean(axis=0), axis=1).mean())


def collapse_symptom(record):
    """The collapse symptom in an epoch record, or None for a healthy epoch.

    Args:
      record: the Trainer's epoch record (``loss``, ``grad_norm`` means; optional
        ``val_embedding_spread``).
    Returns:
      a sentence describing the symptom, or None.
    """
    grad_norm, loss = record.get("grad_norm"), record.get("loss")
    if grad_norm is not None and loss is not None and grad_norm < GRAD_NORM_FLOOR \
            and loss > LOSS_FLOOR:
        return (f"the gradient norm vanished (epoch mean {grad_norm:.3g}) while the loss is "
                f"stuck at {loss:.4g}")
    spread = record.get("val_embedding_spread")
    if spread is not None and spread < SPREAD_FLOOR:
        return (f"all validation embeddings coincide (mean distance to their centroid "
                f"{spread:.3g})")
    return None


def collapse_message(epoch, symptom, record, last_checkpoint):
    """The error message of a collapse at ``epoch``."""
    return (f"training collapsed at epoch {epoch}: {symptom}. Likely cause: a learning rate "
            f"too large for this model (lr {record.get('lr', float('nan')):.3g}); lower it "
            f"(SPEC §6 uses 1e-5) or check the inputs. Training stopped without saving this "
            f"epoch; the last good checkpoint is {last_checkpoint}.")
