"""Gradient transforms: small callables applied in order before the optimizer step (SPEC §6).

Protocol: ``transform(grads, variables) -> grads`` where ``grads`` and ``variables`` are
same-length lists (a gradient may be None: it passes through unchanged). The trainer calls the
chain inside the replica step, *after* summing the gradients over replicas, so every transform
sees the gradient of the global batch exactly once (global-norm clipping in particular).
Variables are matched by identity (the objects in ``model.trainable_variables``).

The chain the paper's training uses (and :func:`default_gradient_transforms` builds), in order:
proximal term (CCP, :class:`ccp.projection.ProximalTerm`), weight decay 1e-4 on non-BatchNorm
weights, clip by global norm 10, clip by value 10; then Adam (with per-variable learning-rate
multipliers inside the optimizer, :class:`ccp.training.optimizers.AdamLRM`).
"""
import tensorflow as tf

from ccp import defaults
from ccp import layers as layers_lib


class GradientTransform:
    """Base class: ``(grads, variables) -> grads``; subclasses implement :meth:`__call__`."""

    def __call__(self, grads, variables):
        raise NotImplementedError

    def __repr__(self):
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"


class WeightDecay(GradientTransform):
    """``g += rate * w`` for the given variables (L2 weight decay added to the gradient).

    Args:
      rate: decay coefficient (SPEC §6: 1e-4).
      decayed_variables: the variables that get the term (others pass unchanged).
    """

    def __init__(self, rate, decayed_variables):
        self.rate = float(rate)
        self._ids = {id(v) for v in decayed_variables}

    def __call__(self, grads, variables):
        return [g + tf.cast(self.rate, g.dtype) * tf.cast(v, g.dtype)
                if g is not None and id(v) in self._ids else g
                for g, v in zip(grads, variables)]


class ClipByGlobalNorm(GradientTransform):
    """Rescales all gradients together so their global L2 norm is at most ``clip_norm``."""

    def __init__(self, clip_norm):
        if clip_norm <= 0:
            raise ValueError(f"clip_norm must be > 0, got {clip_norm}")
        self.clip_norm = float(clip_norm)

    def __call__(self, grads, variables):
        clipped, _ = tf.clip_by_global_norm(list(grads), self.clip_norm)  # None stays None
        return list(clipped)


class ClipByValue(GradientTransform):
    """Clips every gradient entry to ``[-clip_value, clip_value]``."""

    def __init__(self, clip_value):
        if clip_value <= 0:
            raise ValueError(f"clip_value must be > 0, got {clip_value}")
        self.clip_value = float(clip_value)

    def __call__(self, grads, variables):
        return [None if g is None else tf.clip_by_value(g, -self.clip_value, self.clip_value)
                for g in grads]


def batchnorm_variables(model):
    """All variables of ``keras.layers.BatchNormalization`` layers inside ``model`` (nested too).

    Identified by layer type, not by name: gamma, beta and the moving statistics.
    """
    seen, found = set(), []
    for layer in layers_lib.batchnorm_layers(model):
        for variable in layer.weights:
            if id(variable) not in seen:
                seen.add(id(variable))
                found.append(variable)
    return found


def default_gradient_transforms(model, loss=None, weight_decay=defaults.WEIGHT_DECAY,
                                clip_norm=defaults.CLIP_NORM, clip_value=defaults.CLIP_VALUE):
    """The SPEC §6 chain: weight decay, clip by global norm, clip by value (0/None disables).

    Weight decay covers every trainable variable of ``model`` except BatchNorm ones, and the
    trainable variables of ``loss`` (proxies, learnable margins): in the reference code the
    proxies are model weights and get the same decay (its exclusion list is BatchNorm only).

    Args:
      model: the embedding model.
      loss: the loss layer or None.
      weight_decay, clip_norm, clip_value: coefficients.
    Returns:
      list of transforms (the proximal term is not included; the trainer puts it first).
    """
    transforms = []
    if weight_decay:
        bn = {id(v) for v in batchnorm_variables(model)}
        decayed = [v for v in model.trainable_variables if id(v) not in bn]
        if loss is not None:
            decayed += list(loss.trainable_variables)
        transforms.append(WeightDecay(weight_decay, decayed))
    if clip_norm:
        transforms.append(ClipByGlobalNorm(clip_norm))
    if clip_value:
        transforms.append(ClipByValue(clip_value))
    return transforms


def reference_chain(model, loss=None, projection=None, weight_decay=defaults.WEIGHT_DECAY,
                    clip_norm=defaults.CLIP_NORM, clip_value=defaults.CLIP_VALUE):
    """The whole SPEC §6 chain: the CCP proximal term of ``projection`` (first, when given),
    then :func:`default_gradient_transforms`. One builder for both loops: the Trainer
    (``build_optimization``) and ``model.fit`` (``ReferenceAdam.attach``).

    Args:
      model, loss: the embedding model and the loss layer (or None).
      projection: a :class:`ccp.projection.AlternatingProjection`, or None.
      weight_decay, clip_norm, clip_value: coefficients (0 disables one).
    Returns:
      list of transforms.
    """
    chain = [] if projection is None else [projection.gradient_transform()]
    return chain + default_gradient_transforms(model, loss, weight_decay=weight_decay,
                                               clip_norm=clip_norm, clip_value=clip_value)


def apply_transforms(transforms, grads, variables):
    """Runs the chain in order; returns the final gradient list."""
    grads = list(grads)
    for transform in transforms:
        grads = list(transform(grads, variables))
        if len(grads) != len(variables):
            raise ValueError(f"gradient transform {transform!r} returned {len(grads)} gradients "
                             f"for {len(variables)} variables")
    return grads
