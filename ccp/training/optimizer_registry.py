"""The optimizers of the reference (its ``Optimizers``: Adam, SGD, RMSprop, Adagrad, Adadelta,
Adamax, Nadam, Ftrl and AdamLRM), each with per-variable learning-rate multipliers.

The multiplier scales the step size of a variable (the learning rate its update step sees):
each class is its keras optimizer with :class:`ccp.training.optimizers.LearningRateMultipliers`
mixed in, as :class:`ccp.training.optimizers.AdamLRM` is for Adam; the reference has
multipliers for Adam only, every optimizer here takes them so ``proxy_lr_multiplier`` works
with any of them. :func:`build_optimizer` builds one for a Trainer phase.
Reference defaults: SGD momentum 0, Nesterov off; RMSprop rho 0.9, momentum 0 (the MLRC
reproduction's optimizer); Adam betas 0.9 / 0.999; the others keras' defaults.
"""
import keras

from ccp import defaults
from ccp.training.optimizers import AdamLRM, LearningRateMultipliers


def _with_multipliers(base):
    cls = type(f"{base.__name__}LRM", (LearningRateMultipliers, base),
               {"__doc__": f"``keras.optimizers.{base.__name__}`` with per-variable learning-rate "
                           "multipliers (set_lr_multiplier)."})
    return keras.saving.register_keras_serializable(package="ccp")(cls)


SGDLRM = _with_multipliers(keras.optimizers.SGD)
RMSpropLRM = _with_multipliers(keras.optimizers.RMSprop)
AdagradLRM = _with_multipliers(keras.optimizers.Adagrad)
AdadeltaLRM = _with_multipliers(keras.optimizers.Adadelta)
AdamaxLRM = _with_multipliers(keras.optimizers.Adamax)
NadamLRM = _with_multipliers(keras.optimizers.Nadam)
FtrlLRM = _with_multipliers(keras.optimizers.Ftrl)

# name -> (class, {reference default hyper-parameters})
OPTIMIZERS = {
    "adam": (AdamLRM, {"beta_1": defaults.ADAM_BETA_1, "beta_2": defaults.ADAM_BETA_2,
                       "epsilon": defaults.ADAM_EPSILON}),
    "sgd": (SGDLRM, {"momentum": defaults.SGD_MOMENTUM, "nesterov": defaults.SGD_NESTEROV}),
    "rmsprop": (RMSpropLRM, {"rho": defaults.RMSPROP_RHO,
                             "momentum": defaults.RMSPROP_MOMENTUM}),
    "adagrad": (AdagradLRM, {}),
    "adadelta": (AdadeltaLRM, {}),
    "adamax": (AdamaxLRM, {}),
    "nadam": (NadamLRM, {}),
    "ftrl": (FtrlLRM, {}),
}


def create(name, learning_rate, options=None, optimizer_name=None):
    """An unbuilt optimizer ``name`` (a key of OPTIMIZERS) with the reference defaults updated
    by ``options`` (keyword arguments of its keras class, e.g. ``{"momentum": 0.9}``).

    Raises:
      ValueError: unknown name, or an option the optimizer does not take (named).
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; valid: {sorted(OPTIMIZERS)}")
    cls, hyper = OPTIMIZERS[name]
    hyper = {**hyper, **(options or {})}
    try:
        return cls(learning_rate=learning_rate, name=optimizer_name, **hyper)
    except TypeError as error:
        raise ValueError(f"optimizer {name!r} does not take {sorted(options or {})}: "
                         f"{error}") from error


def build_optimizer(variables, learning_rate, beta_1=defaults.ADAM_BETA_1,
                    beta_2=defaults.ADAM_BETA_2, epsilon=defaults.ADAM_EPSILON,
                    lr_multipliers=(), name=None, optimizer="adam", options=None):
    """An optimizer of :data:`OPTIMIZERS`, built for ``variables``, loss-scaled under
    ``mixed_float16``. Call inside the strategy scope.

    Args:
      variables: the variables it will update.
      learning_rate: float or a ``keras.optimizers.schedules.LearningRateSchedule``.
      beta_1, beta_2, epsilon: Adam ("adam" only).
      lr_multipliers: iterable of ``(variables, multiplier)``.
      name: optimizer name.
      optimizer: a key of :data:`OPTIMIZERS` ("adam": AdamLRM with beta_1, beta_2, epsilon;
        the others take ``options``, their keras arguments).
    Returns:
      the optimizer (a ``keras.mixed_precision.LossScaleOptimizer`` wrapping it when the
      global policy is ``mixed_float16``; float16 gradients need loss scaling).
    """
    if optimizer == "adam":
        inner = AdamLRM(learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2,
                        epsilon=epsilon, name=name)
    else:  # the reference's other optimizers (issue 15), with the same lr multipliers
        inner = create(optimizer, learning_rate, options, name)
    built = inner
    if keras.mixed_precision.global_policy().name == "mixed_float16":
        built = keras.mixed_precision.LossScaleOptimizer(inner, name=f"{name}_loss_scale"
                                                         if name else None)
    built.build(list(variables))
    for group, multiplier in lr_multipliers:
        inner.set_lr_multiplier(group, multiplier)
    return built
