"""Learning-rate schedules: constant, exponential decay (per step), reduce-on-plateau (per epoch).

Defaults come from :mod:`ccp.defaults`: exponential decay 0.1 every 1e4 steps (staircase);
reduce-on-plateau on the validation MAP@R with factor 0.5, patience 4, min_delta 1e-3,
cooldown 2, min_lr 1e-6 (Keras' ReduceLROnPlateau semantics, mode "max").
"""
import math

import keras
from absl import logging

from ccp import defaults
from ccp.tracking import ImprovementTracker

LR_SCHEDULES = ("constant", "exponential", "plateau")


class ReduceLROnPlateau:
    """Reduce-on-plateau for a metric to maximize (validation MAP@R), pure Python.

    After ``patience`` epochs without ``value > best + min_delta`` the learning rate becomes
    ``max(lr * factor, min_lr)`` and ``cooldown`` epochs follow during which no epoch counts as
    a bad one. The best value and the wait live in a :class:`ccp.tracking.ImprovementTracker`;
    the state is checkpointed through ``ccp.tracking.PythonStateCheckpoint``.

    Args:
      factor, patience, min_delta, cooldown, min_lr: as ``keras.callbacks.ReduceLROnPlateau``.
    """

    def __init__(self, factor=defaults.LR_PLATEAU_FACTOR, patience=defaults.LR_PLATEAU_PATIENCE,
                 min_delta=defaults.LR_PLATEAU_MIN_DELTA, cooldown=defaults.LR_PLATEAU_COOLDOWN,
                 min_lr=defaults.MIN_LEARNING_RATE):
        if not 0.0 < factor < 1.0:
            raise ValueError(f"plateau factor must be in (0, 1), got {factor}")
        self.factor = float(factor)
        self.cooldown = int(cooldown)
        self.min_lr = float(min_lr)
        self.tracker = ImprovementTracker("max", min_delta=min_delta, patience=patience)
        self.cooldown_counter = 0

    def on_epoch_end(self, value, optimizer):
        """Feeds one validation value; returns the new learning rate when it changed, else None.

        Args:
          value: the monitored value (None/NaN: ignored).
          optimizer: the optimizer whose (float, settable) learning rate is reduced.
        """
        if value is None or math.isnan(value):
            return None
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.tracker.wait = 0
        in_cooldown = self.cooldown_counter > 0  # Keras checks after the decrement
        improved = self.tracker.update(value)
        if in_cooldown:  # epochs of a cooldown never count as bad ones
            self.tracker.wait = 0
        if improved or in_cooldown or not self.tracker.exhausted:
            return None
        old = float(optimizer.learning_rate.numpy())
        if old <= self.min_lr:
            return None
        new = max(old * self.factor, self.min_lr)
        self.tracker.wait = 0
        optimizer.learning_rate = new
        self.cooldown_counter = self.cooldown
        logging.info("learning rate reduced on plateau: %.3g -> %.3g", old, new)
        return new

    def get_state(self):
        return {"tracker": self.tracker.get_state(), "cooldown_counter": self.cooldown_counter}

    def set_state(self, state):
        self.tracker.set_state(state["tracker"])
        self.cooldown_counter = int(state["cooldown_counter"])


def build_learning_rate(name, learning_rate, decay_rate=defaults.LR_EXPONENTIAL_RATE,
                        decay_steps=defaults.LR_DECAY_STEPS, staircase=defaults.LR_STAIRCASE):
    """The optimizer's ``learning_rate`` argument for a schedule name.

    Args:
      name: "constant", "exponential" or "plateau" (plateau: a float, reduced per epoch by
        :class:`ReduceLROnPlateau`).
      learning_rate: the initial rate.
      decay_rate, decay_steps, staircase: the exponential schedule (on optimizer steps).
    Returns:
      a float or a ``keras.optimizers.schedules.ExponentialDecay``.
    """
    if name not in LR_SCHEDULES:
        raise ValueError(
            f"unknown learning-rate schedule {name!r}; valid: {', '.join(LR_SCHEDULES)}")
    if name == "exponential":
        return keras.optimizers.schedules.ExponentialDecay(
            float(learning_rate), decay_steps=int(decay_steps), decay_rate=float(decay_rate),
            staircase=bool(staircase))
    return float(learning_rate)
