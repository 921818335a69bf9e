"""CCP's alternating projection carried out (SPEC §5): schedule + anchor + proxy bank.

:class:`AlternatingProjection` composes the three parts and acts on the schedule's decisions:
``NEW_BEST`` snapshots the weights and proxies, ``PROJECT`` moves the anchor and rebuilds the
proxies. It is fully built at construction (inside the strategy scope) and checkpointable.
"""
import collections
import math

import tensorflow as tf
from absl import logging

from ccp import defaults
from ccp.projection import proxies as proxies_lib
from ccp.projection.anchor import ProximalAnchor
from ccp.projection.schedule import NEW_BEST, PROJECT, ProjectionSchedule
from ccp.tracking import PythonStateCheckpoint

ScheduleDecision = collections.namedtuple("ScheduleDecision", ["action", "event"])
ScheduleDecision.__doc__ = """What the projection did at an epoch end.

Fields:
  action: ``CONTINUE``, ``NEW_BEST`` or ``PROJECT``.
  event: dict describing a projection (JSON-able floats/ints), or None.
"""


class AlternatingProjection(tf.Module):
    """The CCP projection of one model and one proxy bank (SPEC §5).

    Usage (the :class:`ccp.training.Trainer` does this): put :meth:`gradient_transform` first
    in the gradient chain (``ccp.training.build_optimization(..., projection=...)``); call
    :meth:`initialize_proxies` before training and :meth:`on_epoch_end` with each epoch's
    validation MAP@R.

    Args:
      model_variables: the model's trainable variables (the proximal term's domain).
      proxy_owner: the layer whose proxies a projection rebuilds (a ``CCPLoss``, or a
        ``CrossBatchMemory`` around one), or None (then only the proximal schedule runs).
      lambda_0, decay: ``lambda_t = lambda_0 * decay**t`` in instance ``t >= 1``, 0 before.
      patience, min_epochs_per_instance, min_delta, monitor_lag: the
        :class:`ProjectionSchedule`.
      pool_size: ``b``, pool images per class; a pool must hold ``b`` candidates per class, or
        ``b * K`` when ``b < K``. None skips the check.
      random_init: keep the loss's initial (random) proxies instead of the k-center init.
      monitor: the validation metric the schedule follows (a key of the validation metrics:
        "map_at_r", "precision_at_1", "r_precision", "recall_at_<k>"), or "loss" (the
        epoch's mean training loss); the Trainer feeds it.
      stop_at_min: an instance ends at the minimum of a loss-type monitor (mode "min");
        default from the monitor ("loss": True).
      fixed_interval: 0 (off; None too), or N: project every N epochs without early stopping
        (the reference's fixed ``ccp_iterations``); the anchor moves to the weights at that epoch.
        N epochs are N x steps_per_epoch steps.
      projection_every_steps: 0 (off), or N: project after every N optimizer steps of the
        training phase (warm-up steps do not count), mid-epoch if need be, without early
        stopping (the reference's ``step_at_batch``); the Trainer asks
        :meth:`projection_offsets` where an epoch's steps cross a projection and calls
        :meth:`project` there. The epoch-end schedule then only counts epochs (patience,
        monitor and min_delta are unused); the anchor moves to the weights at that step.
        Exclusive with ``fixed_interval``.
      perturb_noise: sigma: at each projection ``w_prev += rms(w_prev) * N(0, sigma^2)`` per
        variable (the reference adds it to its best-weights copy after the anchor took them;
        0 = none); noise_seed seeds it (stateless, per instance and variable).
      normalized_kcenter: greedy k-center on L2-normalized embeddings (the reference's
        ``normalized_embeddings``).
    """

    def __init__(self, model_variables, proxy_owner=None, *, lambda_0=defaults.CCP_LAMBDA,
                 decay=defaults.CCP_DECAY, patience=defaults.CCP_PATIENCE,
                 min_epochs_per_instance=defaults.CCP_MIN_EPOCHS_PER_INSTANCE,
                 min_delta=defaults.CCP_MIN_DELTA, pool_size=defaults.CCP_POOL_SIZE,
                 random_init=False, monitor_lag=defaults.CCP_MONITOR_LAG,
                 monitor=defaults.CCP_MONITOR, stop_at_min=None,
                 fixed_interval=defaults.CCP_FIXED_INTERVAL,
                 perturb_noise=0.0, noise_seed=0, normalized_kcenter=False,
                 projection_every_steps=defaults.CCP_PROJECTION_EVERY_STEPS,
                 name="alternating_projection"):
        super().__init__(name=name)
        if pool_size is not None and int(pool_size) < 1:
            raise ValueError(f"pool_size must be >= 1 or None, got {pool_size}")
        if float(perturb_noise) < 0:
            raise ValueError(f"perturb_noise must be >= 0, got {perturb_noise}")
        self.monitor = str(monitor)
        if stop_at_min is None:
            stop_at_min = self.monitor == "loss"
        self.schedule = ProjectionSchedule(patience, min_epochs_per_instance, min_delta,
                                           monitor_lag, mode="min" if stop_at_min else "max",
                                           fixed_interval=fixed_interval,
                                           every_steps=projection_every_steps)
        self.perturb_noise = float(perturb_noise)
        self.noise_seed = int(noise_seed)
        self.normalized_kcenter = bool(normalized_kcenter)
        self.schedule_state = PythonStateCheckpoint(self.schedule)
        self.anchor = ProximalAnchor(model_variables, lambda_0, decay)
        self.pool_size = None if pool_size is None else int(pool_size)
        self.random_init = bool(random_init)
        self.proxy_owner = proxy_owner
        self.proxies_initialized = tf.Variable(False, trainable=False, name="proxies_initialized")
        if proxy_owner is not None:
            self.bank_shape = proxies_lib.proxy_bank_shape(proxy_owner)
            self.best_proxies = tf.Variable(proxy_owner.proxies_by_class(), trainable=False,
                                            name="best_proxies")

    # The anchor's state, under the names the logs and tests use.
    @property
    def w_prev(self):
        return self.anchor.w_prev

    @property
    def lambda_t(self):
        return self.anchor.lambda_t

    @property
    def model_variables(self):
        return self.anchor.model_variables

    @property
    def has_proxies(self):
        return self.proxy_owner is not None

    @property
    def projection_every_steps(self):
        """N of ``projection_every_steps`` (0: projections at instance ends)."""
        return self.schedule.every_steps

    def projection_offsets(self, train_steps_done, steps):
        """1-based offsets within the next ``steps`` steps after which :meth:`project` runs
        (``projection_every_steps`` mode; empty otherwise), given the training-phase steps
        already run (:meth:`ProjectionSchedule.projection_offsets`)."""
        return self.schedule.projection_offsets(train_steps_done, steps)

    def gradient_transform(self):
        """The proximal term as a gradient transform (put it first in the chain)."""
        return self.anchor.gradient_transform()

    def _pool(self, pool_fn, index):
        if pool_fn is None:
            raise ValueError("CCP proxies need a proxy pool function (proxy_pool_fn) unless "
                             "random_init=True")
        return proxies_lib.validated_pool(pool_fn(index), self.bank_shape, self.pool_size)

    def initialize_proxies(self, pool_fn):
        """Initial proxies by greedy k-center from an all-zero cover (SPEC §5.4), once.

        Args:
          pool_fn: ``projection_index -> float [C, P, D]`` raw pool embeddings (called with 0),
            or None when ``random_init`` is set.
        Returns:
          an event dict, or None if there was nothing to do (no proxies, already initialized).
        """
        if not self.has_proxies or bool(self.proxies_initialized.numpy()):
            return None
        if self.random_init:
            self.proxies_initialized.assign(True)
            logging.info("CCP: random initial proxies (random_init)")
            return {"event": "proxy_init", "random_init": True}
        pool = self._pool(pool_fn, 0)
        zero_cover = tf.zeros([pool.shape[0], 1, pool.shape[2]], tf.float32)
        event = {"event": "proxy_init", "instance": 0,
                 **proxies_lib.rebuild_proxy_bank(self.proxy_owner, pool, zero_cover,
                                                  self.normalized_kcenter)}
        self.proxies_initialized.assign(True)
        logging.info("CCP: initial proxies by greedy k-center from a pool of %d per class; "
                     "covering radius %.4f, mean proxy distance %.4f", event["pool_size"],
                     event["radius_after"], event["proxy_distance_after"])
        return event

    def _remember_best(self):
        self.anchor.remember_best()
        if self.has_proxies:
            self.best_proxies.assign(self.proxy_owner.proxies_by_class())

    def on_epoch_end(self, value, pool_fn=None):
        """Feeds one epoch's validation MAP@R and acts on the schedule's decision (SPEC §5.2).

        Args:
          value: this epoch's validation MAP@R (float; None or NaN = no value this epoch).
          pool_fn: ``projection_index -> [C, P, D]`` raw pool embeddings, called only when the
            instance ends and the loss has proxies.
        Returns:
          :class:`ScheduleDecision` ``(action, event)``.
        """
        action = self.schedule.update(value)
        if action == NEW_BEST:
            self._remember_best()
        event = self.project(pool_fn) if action == PROJECT else None
        return ScheduleDecision(action, event)

    def project(self, pool_fn=None):
        """Ends the current instance: ``w_prev <- best``, new ``lambda_t``, proxies rebuilt.

        Training continues from the current weights (SPEC §5.3); the new proxies are the
        greedy k-center picks from a fresh pool starting from the instance's best proxies.

        Returns:
          the projection event (dict of JSON-able values).
        """
        summary = self.schedule.end_instance()
        if self.schedule.fixed_interval is not None or self.schedule.every_steps:
            self._remember_best()  # no early stopping: anchor at the current weights
        elif not summary.had_best:
            # Only possible when every value of the instance was NaN: anchor at the current point.
            logging.warning("CCP: instance %d ended without a best snapshot; using the current "
                            "weights and proxies", summary.ended_instance)
            self._remember_best()
        self.anchor.move_to_best(summary.next_instance)
        if self.perturb_noise > 0:
            self.anchor.perturb(self.perturb_noise, self.noise_seed, summary.next_instance)
        event = {"event": "projection", "instance": summary.next_instance,
                 "lambda": float(self.lambda_t.numpy()),
                 # None when nothing was compared (fixed_interval, or only NaN values)
                 "best_value": summary.best_value if math.isfinite(summary.best_value) else None,
                 "epochs_in_instance": summary.epochs}
        if self.schedule.every_steps:
            event["steps_in_instance"] = self.schedule.every_steps
        if self.has_proxies:
            pool = self._pool(pool_fn, summary.next_instance)
            event.update(proxies_lib.rebuild_proxy_bank(self.proxy_owner, pool,
                                                        self.best_proxies,
                                                        self.normalized_kcenter))
        length = (f"{self.schedule.every_steps} steps" if self.schedule.every_steps
                  else f"{summary.epochs} epochs")
        best = "n/a" if event["best_value"] is None else f"{event['best_value']:.4f}"
        logging.info(
            "CCP: problem instance %d ended after %s (best %s %s); lambda=%.3g; "
            "covering radius %.4f -> %.4f; mean proxy distance %.4f -> %.4f",
            summary.ended_instance, length, self.monitor, best, event["lambda"],
            event.get("radius_before", float("nan")), event.get("radius_after", float("nan")),
            event.get("proxy_distance_before", float("nan")),
            event.get("proxy_distance_after", float("nan")))
        return event

    def monitored_value(self, logs):
        """The value :meth:`on_epoch_end` follows, from one epoch's metrics.

        Args:
          logs: dict of the epoch's metrics under Keras' names: the training loss as "loss",
            validation metrics with a "val_" prefix ("val_map_at_r", "val_precision_at_1", ...).
        Returns:
          ``logs["loss"]`` when :attr:`monitor` is "loss", else ``logs["val_" + monitor]``.
        Raises:
          ValueError: the epoch has no such value (names the keys it has).
        """
        key = "loss" if self.monitor == "loss" else f"val_{self.monitor}"
        if key not in logs:
            valid = sorted(k[4:] for k in logs if k.startswith("val_")) + ["loss"]
            raise ValueError(f"CCP monitor {self.monitor!r} (AlternatingProjection(monitor=...)) "
                             f"is not in this epoch's metrics; valid: {valid}")
        return logs[key]

    def state_variables(self):
        """Every TensorFlow variable of the projection's state, in a fixed order: the
        proxies-initialized flag, ``lambda_t``, ``w_prev``, the best weights, the best
        proxies (with a proxy owner). With :meth:`get_state` / :meth:`set_state` (the
        schedule's counters) this is what a resumed run needs."""
        anchor = self.anchor
        return ([self.proxies_initialized, anchor.lambda_t, *anchor.w_prev, *anchor.best_weights]
                + ([self.best_proxies] if self.has_proxies else []))

    def get_state(self):
        """The schedule's counters (JSON-able dict)."""
        return self.schedule.get_state()

    def set_state(self, state):
        self.schedule.set_state(state)

    def state_dict(self):
        """The scalar state as Python values (for logs)."""
        return {"instance": self.schedule.instance, "lambda": float(self.lambda_t.numpy()),
                "epochs_in_instance": self.schedule.epochs_in_instance,
                "epochs_without_improvement": self.schedule.tracker.wait,
                "best_value": self.schedule.tracker.best}


