"""The proximal anchor of CCP (SPEC §5.1, §5.3): ``w_prev``, ``lambda_t``, their gradient term."""
import tensorflow as tf

from ccp import defaults
from ccp.projection.schedule import proximal_coefficient


class ProximalTerm:
    """Gradient transform ``g += lambda_t * (w - w_prev)`` for the model weights (SPEC §5.1).

    Equivalent to adding ``lambda_t / 2 * ||w - w_prev||^2`` to the loss. Variables the anchor
    does not track (proxies and other loss variables) pass unchanged. Follows the trainer's
    transform protocol ``(grads, variables) -> grads`` (lists, entries may be None).
    """

    def __init__(self, anchor):
        self.anchor = anchor

    def __call__(self, grads, variables):
        lambda_t = self.anchor.lambda_t
        out = []
        for grad, variable in zip(grads, variables):
            anchor = self.anchor.anchor_for(variable)
            if grad is None or anchor is None:
                out.append(grad)
            else:
                delta = tf.cast(variable, grad.dtype) - tf.cast(anchor, grad.dtype)
                out.append(grad + tf.cast(lambda_t, grad.dtype) * delta)
        return out

    def __repr__(self):
        return "ProximalTerm()"


class ProximalAnchor(tf.Module):
    """``w_prev`` (the anchor), ``lambda_t`` and the best-weights snapshot of the current instance.

    Create inside the strategy scope. ``lambda_t = lambda_0 * decay**t`` in instance ``t >= 1``
    and 0 in the first instance.

    Args:
      model_variables: the model's trainable variables (the proximal term acts on these only;
        the proxies are excluded, SPEC §5.1).
      lambda_0, decay: the coefficient's schedule (>= 0).
    """

    def __init__(self, model_variables, lambda_0=defaults.CCP_LAMBDA, decay=defaults.CCP_DECAY,
                 name="proximal_anchor"):
        super().__init__(name=name)
        if lambda_0 < 0 or decay < 0:
            raise ValueError(f"lambda_0 and decay must be >= 0, got {lambda_0} and {decay}")
        self.lambda_0 = float(lambda_0)
        self.decay = float(decay)
        self.model_variables = list(model_variables)
        if not self.model_variables:
            raise ValueError("ProximalAnchor needs the model's trainable variables, got none")
        self._index = {id(v): i for i, v in enumerate(self.model_variables)}
        self.lambda_t = tf.Variable(0.0, trainable=False, dtype=tf.float32, name="lambda_t")
        self.w_prev = [tf.Variable(tf.identity(v), trainable=False, name=f"w_prev_{i}")
                       for i, v in enumerate(self.model_variables)]
        self.best_weights = [tf.Variable(tf.identity(v), trainable=False, name=f"best_w_{i}")
                             for i, v in enumerate(self.model_variables)]

    def anchor_for(self, variable):
        """The ``w_prev`` variable of a model variable, or None for untracked variables."""
        index = self._index.get(id(variable))
        return None if index is None else self.w_prev[index]

    def gradient_transform(self):
        """The proximal term as a gradient transform (first in the chain)."""
        return ProximalTerm(self)

    def remember_best(self):
        """Snapshots the current model weights as the instance's best."""
        for best, variable in zip(self.best_weights, self.model_variables):
            best.assign(variable)

    def perturb(self, noise, seed, instance):
        """``w_prev += rms(w_prev) * N(0, noise^2)`` per variable (the reference's
        ``perturb_noise``), drawn statelessly from ``(seed, instance, variable index)``."""
        for index, prev in enumerate(self.w_prev):
            rms = tf.sqrt(tf.reduce_mean(tf.square(prev)))
            draw = tf.random.stateless_normal(
                tf.shape(prev), seed=[int(seed), int(instance) * 100003 + index],
                dtype=prev.dtype)
            prev.assign_add(rms * float(noise) * draw)

    def move_to_best(self, instance):
        """Projection into instance ``instance``: ``w_prev <- best``, ``lambda_t`` updated."""
        for prev, best in zip(self.w_prev, self.best_weights):
            prev.assign(best)
        self.lambda_t.assign(proximal_coefficient(self.lambda_0, self.decay, instance))
