"""Training: the custom loop (:class:`Trainer`) and what it is built from.

Modules, one job each:
  trainer:        ``Trainer``: fit -> epochs -> evaluate -> decisions -> checkpoint -> log.
  train_step:     ``TrainStep``: the traced step (replica gradients, all-gather, transforms,
                  optimizer update), several steps per call.
  optimization:   ``build_optimization`` -> ``Optimization`` (phases, transform chain, plateau).
  transforms:     gradient transforms ``(grads, variables) -> grads`` and the SPEC §6 chain.
  optimizers:     ``AdamLRM`` (Adam with per-variable learning-rate multipliers) and
                  ``ReferenceAdam`` (the whole SPEC §6 step as one Keras optimizer, for
                  ``model.fit``); the ``LearningRateMultipliers`` and ``GradientChain`` mixins.
  optimizer_registry: the reference's other optimizers (SGD, RMSprop, ...), each with
                  learning-rate multipliers (``OPTIMIZERS``, ``create``, ``build_optimizer``).
  schedules:      learning-rate schedules (constant, exponential, reduce-on-plateau).
  distribution:   global batches -> per-replica batches; the worker's role.
  checkpointing:  ``Checkpointing`` (manager, chief/worker folders, restore), RNG states.
  embedding:      ``embed_dataset`` (inference passes, distribution-aware), ``pool_embeddings``
                  (a CCP pool ``[C, P, D]`` from a dataset).
  events:         ``events.jsonl`` + TensorBoard log, progress bar.
The "best value / patience" tracker shared with ``ccp.projection`` is
:class:`ccp.tracking.ImprovementTracker`.
"""
from ccp.tracking import ImprovementTracker
from ccp.training.checkpointing import Checkpointing
from ccp.training.distribution import distribute, single_batch
from ccp.training.embedding import embed_dataset, pool_embeddings
from ccp.training.events import EVENTS_FILE, EventLog
from ccp.training import optimizer_registry
from ccp.training.optimization import TRAIN, WARMUP, Optimization, Phase, build_optimization
from ccp.training.optimizer_registry import build_optimizer
from ccp.training.optimizers import AdamLRM, GradientChain, LearningRateMultipliers, ReferenceAdam
from ccp.training.schedules import LR_SCHEDULES, ReduceLROnPlateau, build_learning_rate
from ccp.training.train_step import TrainStep
from ccp.training.trainer import Trainer, TrainerState
from ccp.training.transforms import (
    ClipByGlobalNorm,
    ClipByValue,
    GradientTransform,
    WeightDecay,
    apply_transforms,
    batchnorm_variables,
    default_gradient_transforms,
    reference_chain,
)

__all__ = [
    "AdamLRM", "Checkpointing", "ClipByGlobalNorm", "ClipByValue", "EVENTS_FILE", "EventLog",
    "GradientChain", "GradientTransform", "ImprovementTracker", "LR_SCHEDULES",
    "LearningRateMultipliers", "Optimization", "Phase", "ReduceLROnPlateau", "ReferenceAdam",
    "TRAIN", "TrainStep", "Trainer", "TrainerState", "WARMUP", "WeightDecay", "apply_transforms",
    "batchnorm_variables", "build_learning_rate", "build_optimization", "build_optimizer",
    "default_gradient_transforms", "distribute", "embed_dataset", "optimizer_registry",
    "pool_embeddings", "reference_chain", "single_batch"
]
