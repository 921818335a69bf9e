"""Training: the custom loop (:class:`Trainer`), gradient transforms, optimizer, schedules.

Modules:
  trainer:     ``Trainer`` (tf.function train step, epochs, validation, early stopping,
               CCP schedule, checkpoints, logging).
  transforms:  gradient transforms ``(grads, variables) -> grads`` and the SPEC §6 chain.
  optimizers:  ``AdamLRM`` (Adam with per-variable learning-rate multipliers).
  schedules:   learning-rate schedules (constant, exponential, reduce-on-plateau).
  embedding:   ``embed_dataset`` (inference passes, distribution-aware).
  events:      ``events.jsonl`` + TensorBoard log, progress bar.
"""
from ccp.training.embedding import embed_dataset
from ccp.training.events import EVENTS_FILE, EventLog
from ccp.training.optimizers import AdamLRM, build_optimizer
from ccp.training.schedules import LR_SCHEDULES, ReduceLROnPlateau, build_learning_rate
from ccp.training.trainer import TRAIN, WARMUP, Trainer, TrainerState
from ccp.training.transforms import (
    ClipByGlobalNorm,
    ClipByValue,
    GradientTransform,
    WeightDecay,
    apply_transforms,
    batchnorm_variables,
    default_gradient_transforms,
    find_layer,
)

__all__ = [
    "AdamLRM", "ClipByGlobalNorm", "ClipByValue", "EVENTS_FILE", "EventLog", "GradientTransform",
    "LR_SCHEDULES", "ReduceLROnPlateau", "TRAIN", "Trainer", "TrainerState", "WARMUP",
    "WeightDecay", "apply_transforms", "batchnorm_variables", "build_learning_rate",
    "build_optimizer", "default_gradient_transforms", "embed_dataset", "find_layer",
]
