"""The optimizers of the reference (its ``Optimizers``: Adam, SGD, RMSprop, Adagrad, Adadelta,
Adamax, Nadam, Ftrl and AdamLRM), each with per-variable learning-rate multipliers.

The multiplier scales the step size of a variable (the learning rate its update step sees),
as :class:`ccp.training.optimizers.AdamLRM` does for Adam; the reference has multipliers for
Adam only, every optimizer here takes them so ``proxy_lr_multiplier`` works with any of them.
Reference defaults: SGD momentum 0, Nesterov off; RMSprop rho 0.9, momentum 0 (the MLRC
reproduction's optimizer); Adam betas 0.9 / 0.999; the others keras' defaults.
"""
import keras
import tensorflow as tf

from ccp import defaults
from ccp.training.optimizers import AdamLRM


class _LRMultipliers:
    """Mixin: ``set_lr_multiplier(variables, m)``; ``update_step`` scales the learning rate."""

    def _multipliers(self):
        if not hasattr(self, "_lr_multipliers"):
            self._lr_multipliers = {}
        return self._lr_multipliers

    def set_lr_multiplier(self, variables, multiplier):
        """Multiplies the learning rate of ``variables`` by ``multiplier`` (1.0 removes it)."""
        for variable in variables:
            key = self._var_key(variable)
            if float(multiplier) == 1.0:
                self._multipliers().pop(key, None)
            else:
                self._multipliers()[key] = float(multiplier)

    def lr_multiplier(self, variable):
        """The multiplier of ``variable`` (1.0 when none was set)."""
        return self._multipliers().get(self._var_key(variable), 1.0)

    def update_step(self, gradient, variable, learning_rate):
        multiplier = self._multipliers().get(self._var_key(variable))
        if multiplier is not None:
            learning_rate = tf.cast(learning_rate, variable.dtype) * multiplier
        super().update_step(gradient, variable, learning_rate)


def _with_multipliers(base):
    cls = type(f"{base.__name__}LRM", (_LRMultipliers, base),
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
        raise ValueError(f"unknown optimizer {name!r} (--optimizer); valid: {sorted(OPTIMIZERS)}")
    cls, hyper = OPTIMIZERS[name]
    hyper = {**hyper, **(options or {})}
    try:
        return cls(learning_rate=learning_rate, name=optimizer_name, **hyper)
    except TypeError as error:
        raise ValueError(f"optimizer {name!r} does not take {sorted(options or {})}: "
                         f"{error}") from error
