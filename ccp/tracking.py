"""One "best value and patience" tracker, and how pure-Python state enters a checkpoint.

Early stopping (:class:`ccp.training.Trainer`), the CCP problem-instance schedule
(:class:`ccp.projection.ProjectionSchedule`) and the plateau learning-rate schedule
(:class:`ccp.training.ReduceLROnPlateau`) all ask the same question of a metric trace: did this
value improve on the best so far by more than ``min_delta``, and for how many values in a row
has it not. :class:`ImprovementTracker` is plain Python (testable on a list of numbers, no
TensorFlow variables); its state is a few numbers (:meth:`ImprovementTracker.get_state`), saved
in a ``tf.train.Checkpoint`` through :class:`PythonStateCheckpoint`.
"""
import json
import math

import tensorflow as tf

MODES = ("max", "min")


class ImprovementTracker:
    """The best value of a monitored metric and the count of values since it improved.

    An improvement is ``value > best + min_delta`` (mode "max") or ``value < best - min_delta``
    (mode "min"). NaN never improves.

    Args:
      mode: "max" (MAP@R, recall) or "min" (a loss).
      min_delta: the margin an improvement must exceed (>= 0).
      patience: values without improvement after which :attr:`exhausted` is True; None = never.
    """

    def __init__(self, mode="max", min_delta=0.0, patience=None):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if min_delta < 0:
            raise ValueError(f"min_delta must be >= 0, got {min_delta}")
        if patience is not None and int(patience) < 1:
            raise ValueError(f"patience must be >= 1 or None, got {patience}")
        self.mode = mode
        self.min_delta = float(min_delta)
        self.patience = None if patience is None else int(patience)
        self.reset()

    def reset(self):
        """Forgets the best value: the next finite value is an improvement."""
        self.best = -math.inf if self.mode == "max" else math.inf
        self.best_step = None
        self.wait = 0

    def is_improvement(self, value):
        """Whether ``value`` would improve on :attr:`best` (no state change)."""
        if self.mode == "max":
            return value > self.best + self.min_delta
        return value < self.best - self.min_delta

    def update(self, value, step=None):
        """Feeds one value; returns True when it is a new best (then ``wait`` is 0).

        Args:
          value: float.
          step: optional label of the value (e.g. the epoch), kept as :attr:`best_step`.
        """
        value = float(value)
        if self.is_improvement(value):
            self.best, self.best_step, self.wait = value, step, 0
            return True
        self.wait += 1
        return False

    @property
    def has_best(self):
        return not math.isinf(self.best)

    @property
    def exhausted(self):
        """True when ``patience`` values in a row did not improve (False without patience)."""
        return self.patience is not None and self.wait >= self.patience

    def get_state(self):
        """JSON-able state (infinities as strings)."""
        return {"best": repr(self.best), "best_step": self.best_step, "wait": self.wait}

    def set_state(self, state):
        self.best = float(state["best"])
        self.best_step = state["best_step"]
        self.wait = int(state["wait"])

    def __repr__(self):
        return (f"ImprovementTracker(mode={self.mode!r}, min_delta={self.min_delta}, "
                f"patience={self.patience}, best={self.best}, wait={self.wait})")


class PythonStateCheckpoint(tf.train.experimental.PythonState):
    """Puts an object's ``get_state()`` (JSON-able dict) into a ``tf.train.Checkpoint``.

    ``tf.train.experimental.PythonState`` is TensorFlow's public hook for Python-side state: the
    dict is serialized when the checkpoint is saved and handed back to ``set_state`` when it is
    restored.

    Args:
      target: an object with ``get_state() -> dict`` and ``set_state(dict)``.
    """

    def __init__(self, target):
        self.target = target

    def serialize(self):
        return json.dumps(self.target.get_state(), sort_keys=True)

    def deserialize(self, string_value):
        if isinstance(string_value, bytes):
            string_value = string_value.decode("utf-8")
        self.target.set_state(json.loads(string_value))
