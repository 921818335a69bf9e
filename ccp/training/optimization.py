"""What the optimizer step of a run is made of, built by the caller and handed to the Trainer.

:class:`Optimization` bundles the training phase (its variables and optimizer), an optional
warm-up phase, the gradient-transform chain and the plateau schedule. :func:`build_optimization`
builds the common case of SPEC §6 (Adam with a proxy learning-rate multiplier, the proximal term
of CCP, weight decay, clipping); callers with other needs construct :class:`Optimization`
themselves.
"""
import dataclasses

from absl import logging

from ccp import defaults
from ccp.training import optimizer_registry
from ccp.training import schedules as schedules_lib
from ccp.training import transforms as transforms_lib

TRAIN = "train"
WARMUP = "warmup"


@dataclasses.dataclass
class Phase:
    """The variables one phase trains and the optimizer that updates them.

    Fields:
      variables: list of variables (the gradient is taken with respect to these, in order).
      optimizer: a built ``keras.optimizers.Optimizer`` (possibly a ``LossScaleOptimizer``).
      model_training: whether the model runs in training mode (False for a warm-up that keeps
        the backbone's BatchNorm statistics frozen).
    """

    variables: list
    optimizer: object
    model_training: bool = True


@dataclasses.dataclass
class Optimization:
    """The optimizer side of a Trainer.

    Fields:
      train: the main :class:`Phase`.
      gradient_transforms: list of ``(grads, variables) -> grads`` applied in order to the
        global-batch gradient (the CCP proximal term first, see ``ccp.projection``).
      plateau: a :class:`ccp.training.ReduceLROnPlateau` driven by the validation MAP@R, or None.
      warmup: the warm-up :class:`Phase` of the first ``warmup_epochs`` epochs, or None.
      warmup_epochs: epochs of the warm-up phase.
      warmup_fraction: w of a fractional warm-up (0 < w < 1: its one epoch runs
        round(w x steps_per_epoch) steps), else None.
      projection: the :class:`ccp.projection.AlternatingProjection` whose proximal term is in
        the chain, or None; the Trainer takes it from here (it is passed once, to
        :func:`build_optimization`).
    """

    train: Phase
    gradient_transforms: list = dataclasses.field(default_factory=list)
    plateau: object = None
    warmup: Phase = None
    warmup_epochs: int = 0
    warmup_fraction: float = None
    projection: object = None

    def __post_init__(self):
        if int(self.warmup_epochs) < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {self.warmup_epochs}")
        if self.warmup_epochs and self.warmup is None:
            raise ValueError("warmup_epochs > 0 needs a warm-up Phase (variables, optimizer)")

    @property
    def phases(self):
        """``{"train": Phase[, "warmup": Phase]}``."""
        return {TRAIN: self.train, **({WARMUP: self.warmup} if self.warmup_epochs else {})}

    def steps_in_epoch(self, epoch, steps_per_epoch):
        """Steps of 1-based ``epoch``: round(warmup_fraction x steps_per_epoch) (at least 1)
        for the one epoch of a fractional warm-up, else ``steps_per_epoch``."""
        if self.warmup_fraction is not None and self.phase_of_epoch(epoch) == WARMUP:
            return max(1, int(round(self.warmup_fraction * steps_per_epoch)))
        return steps_per_epoch

    def phase_of_epoch(self, epoch):
        """The phase name of a 1-based epoch."""
        return WARMUP if epoch <= self.warmup_epochs else TRAIN


def build_optimization(model, loss, *, projection=None, learning_rate=defaults.LEARNING_RATE,
                       adam_beta_1=defaults.ADAM_BETA_1, adam_beta_2=defaults.ADAM_BETA_2,
                       adam_epsilon=defaults.ADAM_EPSILON, lr_schedule=defaults.LR_SCHEDULE,
                       lr_decay_rate=None, lr_decay_steps=defaults.LR_DECAY_STEPS,
                       lr_staircase=defaults.LR_STAIRCASE,
                       lr_plateau_patience=defaults.LR_PLATEAU_PATIENCE,
                       lr_plateau_min_delta=defaults.LR_PLATEAU_MIN_DELTA,
                       lr_plateau_cooldown=defaults.LR_PLATEAU_COOLDOWN,
                       min_learning_rate=defaults.MIN_LEARNING_RATE,
                       proxy_lr_multiplier=defaults.PROXY_LR_MULTIPLIER,
                       weight_decay=defaults.WEIGHT_DECAY, clip_norm=defaults.CLIP_NORM,
                       clip_value=defaults.CLIP_VALUE, warmup_epochs=defaults.WARMUP_EPOCHS,
                       warmup_variables=None, optimizer=defaults.OPTIMIZER,
                       momentum=None, nesterov=defaults.SGD_NESTEROV,
                       rmsprop_rho=defaults.RMSPROP_RHO,
                       warmup_lr_multiplier=defaults.WARMUP_LR_MULTIPLIER,
                       warmup_all_layers=defaults.WARMUP_ALL_LAYERS):
    """The SPEC §6 optimization of ``model`` and ``loss``; call inside the strategy scope.

    Args:
      model, loss: the embedding model and the loss layer (variables created).
      projection: a :class:`ccp.projection.AlternatingProjection`; its proximal term goes first
        in the chain, and the Trainer given this Optimization runs its schedule.
      learning_rate, adam_beta_1, adam_beta_2, adam_epsilon: Adam.
      lr_schedule: "constant", "exponential" (per step) or "plateau" (on validation MAP@R).
      lr_decay_rate: exponential rate or plateau factor (None: the default of the schedule).
      lr_decay_steps, lr_staircase: exponential schedule.
      lr_plateau_patience, lr_plateau_min_delta, lr_plateau_cooldown, min_learning_rate: plateau.
      proxy_lr_multiplier: step-size multiplier of ``loss.proxy_variables`` (AdamLRM).
      weight_decay, clip_norm, clip_value: the transform chain (0 disables one).
      warmup_epochs: first epochs training only ``warmup_variables`` and the loss's trainable
        variables (the model in inference mode), with their own Adam at ``learning_rate``.
      warmup_variables: explicit list of model variables the warm-up trains (e.g. the
        embedding head's ``trainable_variables``); required when ``warmup_epochs > 0``
        unless ``warmup_all_layers``.
      optimizer: a key of ``ccp.training.optimizer_registry.OPTIMIZERS`` ("adam", "sgd",
        "rmsprop", "adagrad", "adadelta", "adamax", "nadam", "ftrl"); the adam_* arguments
        apply to "adam" only.
      momentum: SGD / RMSprop momentum (None: 0); nesterov: SGD; rmsprop_rho: RMSprop (0.9).
      warmup_lr_multiplier: the warm-up learning rate is ``learning_rate`` x this (1.0).
      warmup_all_layers: the warm-up trains every variable with the model in training mode
        (the reference's freeze_during_warmup=False) instead of ``warmup_variables``.
      A fractional ``warmup_epochs`` w < 1 is one warm-up epoch of round(w x steps_per_epoch)
      steps (:meth:`Optimization.steps_in_epoch`); w >= 1 is int(w) epochs (the reference).
    Returns:
      :class:`Optimization`.
    """
    _check_arguments(learning_rate, lr_schedule, warmup_lr_multiplier)
    options = _optimizer_options(optimizer, momentum, nesterov, rmsprop_rho)
    warmup_count = _warmup_epoch_count(warmup_epochs)
    if warmup_count > 0 and not warmup_variables and not warmup_all_layers:
        raise ValueError("warmup_epochs > 0 needs warmup_variables: the model variables the "
                         "warm-up trains (e.g. the embedding head's trainable_variables)")
    if lr_decay_rate is None:
        lr_decay_rate = (defaults.LR_EXPONENTIAL_RATE if lr_schedule == "exponential"
                         else defaults.LR_PLATEAU_FACTOR)
    loss_variables = list(loss.trainable_variables)
    adam = dict(beta_1=adam_beta_1, beta_2=adam_beta_2, epsilon=adam_epsilon,
                lr_multipliers=_proxy_lr_multipliers(loss, proxy_lr_multiplier),
                optimizer=optimizer, options=options)
    schedule = schedules_lib.build_learning_rate(
        lr_schedule, learning_rate, decay_rate=lr_decay_rate, decay_steps=lr_decay_steps,
        staircase=lr_staircase)
    train_variables = list(model.trainable_variables) + loss_variables
    train = Phase(train_variables, optimizer_registry.build_optimizer(
        train_variables, schedule, name=optimizer, **adam))
    warmup = None if warmup_count <= 0 else _warmup_phase(
        train_variables if warmup_all_layers else list(warmup_variables) + loss_variables,
        float(learning_rate) * float(warmup_lr_multiplier), bool(warmup_all_layers), adam)
    plateau = _plateau_schedule(lr_schedule, lr_decay_rate, lr_plateau_patience,
                                lr_plateau_min_delta, lr_plateau_cooldown, min_learning_rate)
    chain = transforms_lib.reference_chain(model, loss, projection, weight_decay=weight_decay,
                                           clip_norm=clip_norm, clip_value=clip_value)
    return Optimization(train=train, gradient_transforms=chain, plateau=plateau, warmup=warmup,
                        warmup_epochs=warmup_count,
                        warmup_fraction=float(warmup_epochs) if 0 < warmup_epochs < 1 else None,
                        projection=projection)


def _proxy_lr_multipliers(loss, multiplier):
    """``[(loss.proxy_variables, multiplier)]``, or ``[]`` when the loss has no proxies."""
    proxy_variables = list(loss.proxy_variables)
    if multiplier != 1.0 and not proxy_variables:
        logging.warning("proxy_lr_multiplier=%s ignored: the loss has no proxy_variables",
                        multiplier)
    return [(proxy_variables, multiplier)] if proxy_variables else []


def _warmup_phase(variables, learning_rate, all_layers, optimizer_arguments):
    """The warm-up Phase: its own optimizer (named "warmup_<name>") over ``variables``."""
    return Phase(variables, optimizer_registry.build_optimizer(
        variables, learning_rate, name=f"warmup_{optimizer_arguments['optimizer']}",
        **optimizer_arguments), model_training=all_layers)


def _check_arguments(learning_rate, lr_schedule, warmup_lr_multiplier):
    """build_optimization's checks of single arguments (one-line errors)."""
    if learning_rate <= 0:
        raise ValueError(f"learning_rate must be > 0, got {learning_rate}")
    if lr_schedule not in schedules_lib.LR_SCHEDULES:
        raise ValueError(f"unknown lr_schedule {lr_schedule!r}; valid: "
                         f"{', '.join(schedules_lib.LR_SCHEDULES)}")
    if warmup_lr_multiplier <= 0:
        raise ValueError(f"warmup_lr_multiplier must be > 0, got {warmup_lr_multiplier}")


def _plateau_schedule(lr_schedule, factor, patience, min_delta, cooldown, min_lr):
    """The ReduceLROnPlateau of a "plateau" schedule, else None."""
    if lr_schedule != "plateau":
        return None
    return schedules_lib.ReduceLROnPlateau(factor=factor, patience=patience,
                                           min_delta=min_delta, cooldown=cooldown,
                                           min_lr=min_lr)


def _optimizer_options(optimizer, momentum, nesterov, rmsprop_rho):
    """The keras keyword arguments of a non-Adam optimizer from build_optimization's."""
    if optimizer == "sgd":
        return {"momentum": defaults.SGD_MOMENTUM if momentum is None else float(momentum),
                "nesterov": bool(nesterov)}
    if nesterov:
        raise ValueError(f"nesterov=True needs optimizer='sgd', got {optimizer!r}")
    if optimizer == "rmsprop":
        return {"rho": float(rmsprop_rho),
                "momentum": defaults.RMSPROP_MOMENTUM if momentum is None else float(momentum)}
    if momentum is not None:
        raise ValueError(f"momentum={momentum} needs optimizer 'sgd' or 'rmsprop', got "
                         f"{optimizer!r}")
    return None


def _warmup_epoch_count(warmup_epochs):
    """Warm-up epochs: int(w) for w >= 1, one (shortened) epoch for 0 < w < 1, else 0."""
    if isinstance(warmup_epochs, bool) or warmup_epochs < 0:
        raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs!r}")
    if 0 < warmup_epochs < 1:
        return 1
    return int(warmup_epochs)
