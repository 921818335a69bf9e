"""When CCP projects (SPEC §5.2): a pure-Python decision rule fed one validation value per epoch.

:class:`ProjectionSchedule` only counts and decides; it owns no TensorFlow variables, so it is
tested on a scripted metric trace. :class:`ccp.projection.AlternatingProjection` carries the
decisions out (snapshots, anchor, proxies).
"""
import collections
import math

from ccp import defaults
from ccp.tracking import ImprovementTracker

CONTINUE = "continue"
NEW_BEST = "new_best"
PROJECT = "project"

InstanceSummary = collections.namedtuple(
    "InstanceSummary", ["ended_instance", "next_instance", "best_value", "epochs", "had_best"])
InstanceSummary.__doc__ = """The problem instance a projection ended (from
:meth:`ProjectionSchedule.end_instance`): its index, the next one's, its best value (-inf when it
had none), the epochs it ran and whether any value improved."""


def proximal_coefficient(lambda_0, decay, instance):
    """``lambda_t`` of problem instance ``t``: 0 for ``t = 0``, ``lambda_0 * decay**t`` after."""
    return 0.0 if int(instance) == 0 else float(lambda_0) * float(decay) ** int(instance)


class ProjectionSchedule:
    """Problem-instance counters of CCP: continue / new best / project (SPEC §5.2).

    Each :meth:`update` is one epoch. An instance's values are compared once it has run
    ``min_epochs_per_instance`` epochs; a value above the instance's best by more than
    ``min_delta`` is a new best; ``patience`` compared epochs in a row without one end the
    instance (``PROJECT``). After a ``PROJECT`` the caller acts and calls :meth:`end_instance`.

    Args:
      patience: compared epochs without improvement that end an instance (>= 1).
      min_epochs_per_instance: epochs an instance runs before its values are compared (>= 1).
      min_delta: improvement margin (SPEC §5.2: 1e-5).
      monitor_lag: 0 = decide on this epoch's value; 1 = on the previous epoch's value (the
        reference code's ordering, SPEC §5 "Which epoch's MAP@R").
      mode: "max" (MAP@R, P@1, R@K) or "min" (a loss-type value: the reference's
        ``stop_at_min``).
      fixed_interval: 0 (off; None too), or N: a fixed number of updates per instance
        without early stopping (the reference's ``ccp_iterations`` with
        ``early_stopping=False``): every N-th update is ``PROJECT``, values are not compared
        and no update is ``NEW_BEST``.
      every_steps: 0 (off), or N: instances end after every N training steps instead (the
        reference's ``step_at_batch`` without early stopping): :meth:`update` only counts
        epochs (always ``CONTINUE``) and :meth:`projection_offsets` places the projections.
        Exclusive with ``fixed_interval``.
    """

    def __init__(self, patience=defaults.CCP_PATIENCE,
                 min_epochs_per_instance=defaults.CCP_MIN_EPOCHS_PER_INSTANCE,
                 min_delta=defaults.CCP_MIN_DELTA, monitor_lag=defaults.CCP_MONITOR_LAG,
                 mode="max", fixed_interval=defaults.CCP_FIXED_INTERVAL,
                 every_steps=defaults.CCP_PROJECTION_EVERY_STEPS):
        if fixed_interval is not None and (isinstance(fixed_interval, bool)
                                           or int(fixed_interval) < 0):
            raise ValueError(f"fixed_interval must be an integer >= 0 (0 = off), got "
                             f"{fixed_interval!r}")
        # 0 (the flag's "off", as projection_every_steps) and None both mean no fixed interval.
        self.fixed_interval = int(fixed_interval) if fixed_interval else None
        self.every_steps = _checked_every_steps(every_steps, self.fixed_interval)
        if monitor_lag not in (0, 1):
            raise ValueError(f"monitor_lag must be 0 or 1, got {monitor_lag!r}")
        if int(patience) < 1 or int(min_epochs_per_instance) < 1:
            raise ValueError(f"patience and min_epochs_per_instance must be >= 1, got "
                             f"{patience} and {min_epochs_per_instance}")
        self.min_epochs_per_instance = int(min_epochs_per_instance)
        self.monitor_lag = int(monitor_lag)
        self.tracker = ImprovementTracker(mode, min_delta=min_delta, patience=patience)
        self.instance = 0
        self.epochs_in_instance = 0
        self.lagged_value = math.nan

    @property
    def patience(self):
        return self.tracker.patience

    @property
    def min_delta(self):
        return self.tracker.min_delta

    def update(self, value):
        """Feeds one epoch's value (None/NaN: no value); returns CONTINUE, NEW_BEST or PROJECT."""
        value = math.nan if value is None else float(value)
        if self.monitor_lag:
            value, self.lagged_value = self.lagged_value, value
        self.epochs_in_instance += 1
        if self.every_steps:
            return CONTINUE
        if self.fixed_interval is not None:
            return PROJECT if self.epochs_in_instance >= self.fixed_interval else CONTINUE
        if math.isnan(value) or self.epochs_in_instance < self.min_epochs_per_instance:
            return CONTINUE
        if self.tracker.update(value, step=self.epochs_in_instance):
            return NEW_BEST
        return PROJECT if self.tracker.exhausted else CONTINUE

    def projection_offsets(self, train_steps_done, steps):
        """Where the next ``steps`` steps cross an every-``every_steps`` boundary.

        Args:
          train_steps_done: training-phase steps run before them (>= 0).
          steps: steps about to run (>= 0).
        Returns:
          the 1-based offsets ``o <= steps`` with ``train_steps_done + o`` a multiple of
          ``every_steps``, increasing (empty when ``every_steps`` is 0).
        """
        if not self.every_steps:
            return []
        first = self.every_steps - int(train_steps_done) % self.every_steps
        return list(range(first, int(steps) + 1, self.every_steps))

    def end_instance(self):
        """Closes the current instance and starts the next; returns its :class:`InstanceSummary`."""
        summary = InstanceSummary(self.instance, self.instance + 1, self.tracker.best,
                                  self.epochs_in_instance, self.tracker.has_best)
        self.instance += 1
        self.epochs_in_instance = 0
        self.tracker.reset()
        return summary

    def get_state(self):
        """JSON-able state (checkpointed with ``ccp.tracking.PythonStateCheckpoint``)."""
        return {"instance": self.instance, "epochs_in_instance": self.epochs_in_instance,
                "lagged_value": repr(self.lagged_value), "tracker": self.tracker.get_state()}

    def set_state(self, state):
        self.instance = int(state["instance"])
        self.epochs_in_instance = int(state["epochs_in_instance"])
        self.lagged_value = float(state["lagged_value"])
        self.tracker.set_state(state["tracker"])


def _checked_every_steps(every_steps, fixed_interval):
    """``every_steps`` as an int >= 0; a clear ValueError for a bad value or a conflict."""
    try:
        valid = (not isinstance(every_steps, bool) and float(every_steps).is_integer()
                 and every_steps >= 0)
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise ValueError(f"projection_every_steps must be an integer >= 0 (0 = off), got "
                         f"{every_steps!r}")
    if int(every_steps) and fixed_interval is not None:
        raise ValueError(f"projection_every_steps={int(every_steps)} and fixed_interval="
                         f"{fixed_interval} both fix when CCP projects: set only one "
                         f"(projection_every_steps or fixed_interval)")
    return int(every_steps)
