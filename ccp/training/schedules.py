"""Learning-rate schedules: constant, exponential decay (per step), reduce-on-plateau (per epoch).

Defaults follow the reference configuration: exponential decay 0.1 every 1e4 steps (staircase);
reduce-on-plateau on the validation MAP@R with factor 0.5, patience 5, min_delta 1e-3,
cooldown 2, min_lr 1e-6 (Keras' ReduceLROnPlateau semantics, mode "max").
"""
import math

import keras
import numpy as np
import tensorflow as tf
from absl import logging

LR_SCHEDULES = ("constant", "exponential", "plateau")


class ReduceLROnPlateau(tf.Module):
    """Checkpointable reduce-on-plateau for a metric to maximize (validation MAP@R).

    After ``patience`` epochs without ``value > best + min_delta`` the learning rate becomes
    ``max(lr * factor, min_lr)`` and ``cooldown`` epochs follow during which no epoch counts as
    a bad one.

    Args:
      factor, patience, min_delta, cooldown, min_lr: as ``keras.callbacks.ReduceLROnPlateau``.
    """

    def __init__(self, factor=0.5, patience=5, min_delta=1e-3, cooldown=2, min_lr=1e-6,
                 name="reduce_lr_on_plateau"):
        super().__init__(name=name)
        if not 0.0 < factor < 1.0:
            raise ValueError(f"plateau factor must be in (0, 1), got {factor}")
        self.factor = float(factor)
        self.patience = int(patience)
        self.min_delta = float(min_delta)
        self.cooldown = int(cooldown)
        self.min_lr = float(min_lr)
        self.best = tf.Variable(-np.inf, trainable=False, dtype=tf.float32, name="best")
        self.wait = tf.Variable(0, trainable=False, dtype=tf.int64, name="wait")
        self.cooldown_counter = tf.Variable(0, trainable=False, dtype=tf.int64,
                                            name="cooldown_counter")

    def on_epoch_end(self, value, optimizer):
        """Feeds one validation value; returns the new learning rate when it changed, else None.

        Args:
          value: the monitored value (None/NaN: ignored).
          optimizer: the optimizer whose (float, settable) learning rate is reduced.
        """
        if value is None or math.isnan(value):
            return None
        if int(self.cooldown_counter.numpy()) > 0:
            self.cooldown_counter.assign_sub(1)
            self.wait.assign(0)
        if value > float(self.best.numpy()) + self.min_delta:
            self.best.assign(value)
            self.wait.assign(0)
            return None
        if int(self.cooldown_counter.numpy()) > 0:
            return None
        if int(self.wait.assign_add(1).numpy()) < self.patience:
            return None
        old = float(optimizer.learning_rate.numpy())
        if old <= self.min_lr:
            return None
        new = max(old * self.factor, self.min_lr)
        self.wait.assign(0)
        optimizer.learning_rate = new
        self.cooldown_counter.assign(self.cooldown)
        logging.info("learning rate reduced on plateau: %.3g -> %.3g", old, new)
        return new


def build_learning_rate(name, learning_rate, decay_rate=0.1, decay_steps=10000, staircase=True):
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
