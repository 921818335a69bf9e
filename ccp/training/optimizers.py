"""Adam with per-variable learning-rate multipliers, and the optimizer builder (SPEC §6).

The reference trains the proxy baselines with a 100x learning-rate multiplier on the proxies
through its ``AdamLRM`` optimizer: the *step size* of those variables is multiplied, Adam's
moments are unchanged. Scaling the gradients instead would be a different thing: Adam
normalizes the gradient by its running RMS, so a constant gradient scale cancels out (apart
from epsilon) and has almost no effect. :class:`AdamLRM` reproduces the reference semantics.
"""
import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="ccp")
class AdamLRM(keras.optimizers.Adam):
    """``keras.optimizers.Adam`` whose learning rate is multiplied per variable.

    Args:
      learning_rate, beta_1, beta_2, epsilon: as Adam (SPEC §6: 1e-5, 0.9, 0.999, 1e-7).
      **kwargs: other ``keras.optimizers.Adam`` arguments.

    Multipliers are set per variable with :meth:`set_lr_multiplier` (identity-matched, so they
    are not part of the config; the trainer sets them after building the optimizer).

    Keras has no public per-variable learning rate, and ``update_step`` receives the backend
    variable (a per-replica component under ``tf.distribute``); the optimizer's own identity key
    ``_var_key`` -- the one Keras' Adam uses to find its moment slots -- is the only key that
    matches it in every case, so it is used here (the one private Keras API in ccp.training).
    """

    def __init__(self, learning_rate=1e-5, beta_1=0.9, beta_2=0.999, epsilon=1e-7, **kwargs):
        super().__init__(learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2,
                         epsilon=epsilon, **kwargs)
        self._lr_multipliers = {}

    def set_lr_multiplier(self, variables, multiplier):
        """Multiplies the learning rate of ``variables`` by ``multiplier`` (1.0 removes it)."""
        for variable in variables:
            key = self._var_key(variable)
            if float(multiplier) == 1.0:
                self._lr_multipliers.pop(key, None)
            else:
                self._lr_multipliers[key] = float(multiplier)

    def lr_multiplier(self, variable):
        """The multiplier of ``variable`` (1.0 when none was set)."""
        return self._lr_multipliers.get(self._var_key(variable), 1.0)

    def update_step(self, gradient, variable, learning_rate):
        multiplier = self._lr_multipliers.get(self._var_key(variable))
        if multiplier is not None:
            learning_rate = tf.cast(learning_rate, variable.dtype) * multiplier
        super().update_step(gradient, variable, learning_rate)


def inner_optimizer(optimizer):
    """The optimizer inside a ``LossScaleOptimizer`` (or the optimizer itself)."""
    if isinstance(optimizer, keras.mixed_precision.LossScaleOptimizer):
        return optimizer.inner_optimizer
    return optimizer


def build_optimizer(variables, learning_rate, beta_1=0.9, beta_2=0.999, epsilon=1e-7,
                    lr_multipliers=(), name=None, optimizer="adam", options=None):
    """An :class:`AdamLRM`, built for ``variables``, loss-scaled under ``mixed_float16``.

    Call inside the strategy scope.

    Args:
      variables: the variables it will update.
      learning_rate: float or a ``keras.optimizers.schedules.LearningRateSchedule``.
      beta_1, beta_2, epsilon: Adam.
      lr_multipliers: iterable of ``(variables, multiplier)``.
      name: optimizer name.
      optimizer: a key of ``ccp.training.optimizer_registry.OPTIMIZERS`` ("adam": AdamLRM
        with beta_1, beta_2, epsilon; the others take ``options``, their keras arguments).
    Returns:
      the optimizer (a ``keras.mixed_precision.LossScaleOptimizer`` wrapping the Adam when the
      global policy is ``mixed_float16``; float16 gradients need loss scaling).
    """
    if optimizer == "adam":
        adam = AdamLRM(learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2,
                       epsilon=epsilon, name=name)
    else:  # the reference's other optimizers (issue 15), with the same lr multipliers
        from ccp.training import optimizer_registry
        adam = optimizer_registry.create(optimizer, learning_rate, options, name)
    optimizer = adam
    if keras.mixed_precision.global_policy().name == "mixed_float16":
        optimizer = keras.mixed_precision.LossScaleOptimizer(adam, name=f"{name}_loss_scale"
                                                             if name else None)
    optimizer.build(list(variables))
    for group, multiplier in lr_multipliers:
        adam.set_lr_multiplier(group, multiplier)
    return optimizer
