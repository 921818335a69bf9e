"""Optimizer pieces of SPEC §6, shared by ``model.fit`` and the :class:`ccp.training.Trainer`.

- :class:`LearningRateMultipliers`: mixin for any ``keras.optimizers.Optimizer``: a per-variable
  multiplier of the *step size*. The reference trains the proxy baselines with a 100x multiplier
  on the proxies through its ``AdamLRM``: the step of those variables is multiplied, Adam's
  moments are unchanged. Scaling the gradients instead would be a different thing: Adam
  normalizes the gradient by its running RMS, so a constant gradient scale cancels out (apart
  from epsilon) and has almost no effect.
- :class:`AdamLRM`: ``keras.optimizers.Adam`` with the multipliers (the reference's optimizer).
- :class:`GradientChain`: mixin running a chain of gradient transforms
  (:mod:`ccp.training.transforms`: the CCP proximal term, weight decay, clipping) inside
  ``Optimizer.apply``, before the update.
- :class:`ReferenceAdam`: the reference's whole step as one Keras optimizer for
  ``model.compile(optimizer=...)``: proximal term -> weight decay on non-BatchNorm weights and
  the proxies -> clip by global norm -> clip by value -> Adam, with a proxy learning-rate
  multiplier. :class:`ccp.models.MetricModel` attaches it to its embedder, loss and projection.

The Trainer applies the same transform chain itself, after summing the replicas' gradients
(``ccp.training.train_step``), and uses :class:`AdamLRM` (or another optimizer of
``ccp.training.optimizer_registry``) for the update.
"""
import keras
import tensorflow as tf

from ccp import defaults, keras_compat
from ccp.training import transforms as transforms_lib


class LearningRateMultipliers:
    """Mixin: ``set_lr_multiplier(variables, m)``; ``update_step`` scales the learning rate.

    Multipliers are identity-matched (not part of the config): set them after building the
    optimizer. Keras has no public per-variable learning rate; the optimizer's own slot key
    (:func:`ccp.keras_compat.optimizer_variable_key`) matches the backend variable that
    ``update_step`` receives in every case, including per-replica components.
    """

    def _multipliers(self):
        if not hasattr(self, "_lr_multipliers"):
            self._lr_multipliers = {}
        return self._lr_multipliers

    def set_lr_multiplier(self, variables, multiplier):
        """Multiplies the learning rate of ``variables`` by ``multiplier`` (1.0 removes it)."""
        for variable in variables:
            key = keras_compat.optimizer_variable_key(self, variable)
            if float(multiplier) == 1.0:
                self._multipliers().pop(key, None)
            else:
                self._multipliers()[key] = float(multiplier)

    def lr_multiplier(self, variable):
        """The multiplier of ``variable`` (1.0 when none was set)."""
        return self._multipliers().get(keras_compat.optimizer_variable_key(self, variable), 1.0)

    def update_step(self, gradient, variable, learning_rate):
        multiplier = self._multipliers().get(keras_compat.optimizer_variable_key(self, variable))
        if multiplier is not None:
            learning_rate = tf.cast(learning_rate, variable.dtype) * multiplier
        super().update_step(gradient, variable, learning_rate)


@keras.saving.register_keras_serializable(package="ccp")
class AdamLRM(LearningRateMultipliers, keras.optimizers.Adam):
    """``keras.optimizers.Adam`` whose learning rate is multiplied per variable.

    Args:
      learning_rate, beta_1, beta_2, epsilon: as Adam (SPEC §6: 1e-5, 0.9, 0.999, 1e-7).
      **kwargs: other ``keras.optimizers.Adam`` arguments.
    """

    def __init__(self, learning_rate=defaults.LEARNING_RATE, beta_1=defaults.ADAM_BETA_1,
                 beta_2=defaults.ADAM_BETA_2, epsilon=defaults.ADAM_EPSILON, **kwargs):
        super().__init__(learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2,
                         epsilon=epsilon, **kwargs)


class GradientChain:
    """Mixin: ``apply(grads, variables)`` runs :attr:`gradient_transforms` first.

    The transforms follow :mod:`ccp.training.transforms`' protocol ``(grads, variables) ->
    grads`` (lists; None gradients pass through) and see the gradient of the global batch
    once: in a replica context with several replicas (``model.fit`` under a
    ``tf.distribute`` strategy) the replicas' gradients are summed first, the chain runs on the
    sum, and each replica hands the optimizer ``1 / num_replicas`` of the result (Keras sums
    them once more), as the Trainer's step does.
    """

    def _chain(self):
        if not hasattr(self, "_gradient_transforms"):
            self._gradient_transforms = None
        return self._gradient_transforms

    @property
    def gradient_transforms(self):
        """The transform list (None until :meth:`set_gradient_transforms`)."""
        return self._chain()

    def set_gradient_transforms(self, transforms):
        """Sets the chain (a list of ``(grads, variables) -> grads``, applied in order)."""
        self._gradient_transforms = list(transforms)

    def apply(self, grads, trainable_variables=None):
        if trainable_variables is None:
            raise ValueError(f"{type(self).__name__} needs the variables with the gradients "
                             "(apply_gradients(zip(grads, variables)))")
        chain = self._chain()
        if chain is None:
            raise ValueError(
                f"{type(self).__name__} has no gradient chain: it needs to know which variables "
                "are the model's, which are BatchNorm and which are proxies. Compile a "
                "ccp.models.MetricModel with it, or call optimizer.attach(model, loss) first")
        variables = list(trainable_variables)
        grads = list(grads)
        context = tf.distribute.get_replica_context()
        replicas = 1 if context is None else context.num_replicas_in_sync
        if replicas > 1:  # global-norm clipping must see the global batch's gradient
            present = [i for i, g in enumerate(grads) if g is not None]
            summed = context.all_reduce(tf.distribute.ReduceOp.SUM,
                                        [tf.convert_to_tensor(grads[i]) for i in present])
            for i, g in zip(present, summed):
                grads[i] = g
        grads = transforms_lib.apply_transforms(chain, grads, variables)
        if replicas > 1:
            grads = [None if g is None else g / replicas for g in grads]
        return super().apply(grads, variables)


@keras.saving.register_keras_serializable(package="ccp")
class ReferenceAdam(GradientChain, AdamLRM):
    """The reference's optimizer step (SPEC §6) as a Keras optimizer.

    Per step: gradient -> ``+ lambda_t (w - w_prev)`` on the model's weights (CCP, when
    attached with a projection) -> ``+ weight_decay * w`` on every non-BatchNorm weight and
    every trainable loss variable (proxies included) -> clip by global norm ``clip_norm`` ->
    clip by value ``clip_value`` -> Adam, the proxies' step size multiplied by
    ``proxy_lr_multiplier``. 0 disables weight_decay, clip_norm or clip_value.

    ``weight_decay`` is the reference's L2 term added to the gradient, not Keras' decoupled
    weight decay (which stays off).

    Args:
      learning_rate, beta_1, beta_2, epsilon: Adam (a float or a Keras schedule).
      weight_decay, clip_norm, clip_value, proxy_lr_multiplier: the chain (ccp.defaults).
      **kwargs: other ``keras.optimizers.Adam`` arguments (not clipnorm, clipvalue,
        global_clipnorm: the chain clips).

    Use it with ``ccp.models.MetricModel.compile(optimizer=ReferenceAdam(...))``, which calls
    :meth:`attach`; on its own it refuses to step before :meth:`attach`.
    """

    def __init__(self, learning_rate=defaults.LEARNING_RATE, beta_1=defaults.ADAM_BETA_1,
                 beta_2=defaults.ADAM_BETA_2, epsilon=defaults.ADAM_EPSILON, *,
                 weight_decay=defaults.WEIGHT_DECAY, clip_norm=defaults.CLIP_NORM,
                 clip_value=defaults.CLIP_VALUE,
                 proxy_lr_multiplier=defaults.PROXY_LR_MULTIPLIER, **kwargs):
        for keras_clip in ("clipnorm", "clipvalue", "global_clipnorm"):
            if kwargs.get(keras_clip) is not None:
                raise ValueError(f"ReferenceAdam clips in its chain: use clip_norm / clip_value "
                                 f"instead of {keras_clip}")
        super().__init__(learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2,
                         epsilon=epsilon, **kwargs)
        self.chain_options = {"weight_decay": float(weight_decay or 0.0),
                              "clip_norm": float(clip_norm or 0.0),
                              "clip_value": float(clip_value or 0.0)}
        self.proxy_lr_multiplier = float(proxy_lr_multiplier)

    def attach(self, model, loss, projection=None):
        """Builds the chain for ``model`` (the embedder), ``loss`` and an optional CCP
        ``projection`` (:class:`ccp.projection.AlternatingProjection`, its proximal term
        first), and sets the proxies' learning-rate multiplier."""
        self.set_gradient_transforms(transforms_lib.reference_chain(
            model, loss, projection, **self.chain_options))
        self.set_lr_multiplier(list(loss.proxy_variables), self.proxy_lr_multiplier)

    def get_config(self):
        config = super().get_config()
        config.update(self.chain_options, proxy_lr_multiplier=self.proxy_lr_multiplier)
        return config


def inner_optimizer(optimizer):
    """The optimizer inside a ``LossScaleOptimizer`` (or the optimizer itself)."""
    if isinstance(optimizer, keras.mixed_precision.LossScaleOptimizer):
        return optimizer.inner_optimizer
    return optimizer
