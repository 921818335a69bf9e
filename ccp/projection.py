"""CCP's alternating projection (SPEC §5): greedy k-center proxies, proximal term, schedule.

Pure tensor functions:

- :func:`greedy_k_center` (public API): per class, ``K`` picks from a candidate pool starting
  from a cover (SPEC §5 "Greedy k-center"), batched over classes, XLA-compilable.
- :func:`covering_radius`, :func:`mean_proxy_distance`: the figures logged at every projection.

State:

- :class:`AlternatingProjection`: a small checkpointable state machine (a ``tf.Module`` whose
  whole state lives in ``tf.Variable`` s) fed one validation MAP@R per epoch. Each call to
  :meth:`AlternatingProjection.on_epoch_end` answers ``CONTINUE``, ``NEW_BEST`` (the instance's
  best weights and proxies were just snapshotted) or ``PROJECT`` (the problem instance ended:
  ``w_prev <- best``, ``lambda_t`` updated, proxies rebuilt by greedy k-center, SPEC §5.3).
- :class:`ProximalTerm`: the gradient transform ``g += lambda_t (w - w_prev)`` on the model
  weights (SPEC §5.1), to be placed first in the trainer's transform chain.
"""
import collections
import math

import numpy as np
import tensorflow as tf
from absl import logging

CONTINUE = "continue"
NEW_BEST = "new_best"
PROJECT = "project"

ScheduleDecision = collections.namedtuple("ScheduleDecision", ["action", "event"])
ScheduleDecision.__doc__ = """What the schedule did at an epoch end.

Fields:
  action: ``CONTINUE``, ``NEW_BEST`` or ``PROJECT``.
  event: dict describing a projection (JSON-able floats/ints), or None.
"""


# ---------------------------------------------------------------------------------------------
# Pure functions.
# ---------------------------------------------------------------------------------------------


def batched_squared_distances(points, centers):
    """Squared L2 distances within each class, ``relu(|p|^2 + |c|^2 - 2 p.c)``.

    Args:
      points: float ``[C, P, D]``.
      centers: float ``[C, M, D]``.
    Returns:
      float ``[C, P, M]``.
    """
    sq_points = tf.reduce_sum(tf.square(points), axis=-1)[:, :, None]
    sq_centers = tf.reduce_sum(tf.square(centers), axis=-1)[:, None, :]
    cross = tf.matmul(points, centers, transpose_b=True)
    return tf.nn.relu(sq_points + sq_centers - 2.0 * cross)


def _first_argmax(values):
    """``[C, P] -> int32 [C]``: index of the row maximum, the lowest index among ties.

    ``tf.argmax`` does not promise which tie it returns; SPEC §5 asks for the lowest index.
    """
    num = tf.shape(values)[1]
    is_max = tf.equal(values, tf.reduce_max(values, axis=1, keepdims=True))
    indices = tf.broadcast_to(tf.range(num, dtype=tf.int32)[None, :], tf.shape(values))
    return tf.reduce_min(tf.where(is_max, indices, num), axis=1)


def greedy_k_center_indices(candidates, centers, k):
    """Greedy k-center picks as indices (SPEC §5), batched over classes.

    ``dist_i = min_{s in centers} ||q_i - s||^2``; ``k`` times: ``i* = argmax dist`` (lowest index
    among ties), ``dist_i <- min(dist_i, ||q_i - q_{i*}||^2)``.

    Args:
      candidates: float ``[C, P, D]``, the pool of each class (``P >= k``).
      centers: float ``[C, M, D]``, the starting cover of each class. ``M`` may be 0: every
        distance starts at ``+inf`` and the first pick is candidate 0.
      k: Python int, the number of picks.
    Returns:
      ``(indices, min_sq_dist)``: int32 ``[C, k]`` picks in pick order, and float ``[C, P]`` the
      final squared distance of each candidate to the starting cover plus the picks.
    Raises:
      ValueError: if the pool (static ``P``) is smaller than ``k``.
    """
    candidates = tf.convert_to_tensor(candidates, tf.float32)
    centers = tf.convert_to_tensor(centers, tf.float32)
    k = int(k)
    if k < 1:
        raise ValueError(f"greedy_k_center needs k >= 1, got {k}")
    if candidates.shape.rank != 3 or centers.shape.rank != 3:
        raise ValueError(
            f"greedy_k_center expects candidates [C, P, D] and centers [C, M, D]; got shapes "
            f"{candidates.shape} and {centers.shape}"
        )
    pool = candidates.shape[1]
    if pool is not None and pool < k:
        raise ValueError(
            f"greedy k-center needs at least k={k} candidates per class, the pool has {pool}; "
            "SPEC §5: when b < K the pool holds b*K candidates"
        )
    if centers.shape[1] == 0:
        min_dist = tf.fill(tf.shape(candidates)[:2], tf.constant(np.inf, tf.float32))
    else:
        min_dist = tf.reduce_min(batched_squared_distances(candidates, centers), axis=-1)
    picks = []
    # k is small (the proxies per class): an unrolled loop keeps shapes static for XLA/TPU.
    for _ in range(k):
        index = _first_argmax(min_dist)
        picked = tf.gather(candidates, index[:, None], batch_dims=1)  # [C, 1, D]
        new_dist = batched_squared_distances(candidates, picked)[:, :, 0]
        min_dist = tf.minimum(min_dist, new_dist)
        picks.append(index)
    return tf.stack(picks, axis=1), min_dist


def greedy_k_center(candidates, centers, k):
    """Greedy k-center per class (SPEC §5), batched over classes; public API.

    Starting from the cover ``centers``, repeatedly keeps the candidate farthest (squared L2)
    from everything covered so far; ties go to the lowest candidate index. With an all-zero
    cover ``[C, 1, D]`` (SPEC §5.4) the first pick is the candidate farthest from the origin;
    with an empty cover (``M = 0``) it is candidate 0. Usable in ``tf.function`` and with
    ``jit_compile=True`` (``k`` is a Python int).

    Args:
      candidates: float ``[C, P, D]``, ``P >= k`` candidates per class.
      centers: float ``[C, M, D]``, the starting cover (e.g. the current best proxies).
      k: Python int, the number of picks per class.
    Returns:
      float32 ``[C, k, D]``: the picked candidates, in pick order.
    """
    candidates = tf.convert_to_tensor(candidates, tf.float32)
    indices, _ = greedy_k_center_indices(candidates, centers, k)
    return tf.gather(candidates, indices, batch_dims=1)


def covering_radius(points, centers):
    """Per class, the largest L2 distance from a point to its nearest center.

    Args:
      points: float ``[C, P, D]``.
      centers: float ``[C, M, D]``, ``M >= 1``.
    Returns:
      float32 ``[C]`` (distances, not squared).
    """
    points = tf.convert_to_tensor(points, tf.float32)
    centers = tf.convert_to_tensor(centers, tf.float32)
    nearest = tf.reduce_min(batched_squared_distances(points, centers), axis=-1)
    return tf.sqrt(tf.reduce_max(nearest, axis=-1))


def mean_proxy_distance(proxies_by_class):
    """Per class, the mean L2 distance between its distinct proxies.

    Args:
      proxies_by_class: float ``[C, K, D]``.
    Returns:
      float32 ``[C]`` (zeros when ``K == 1``).
    """
    proxies = tf.convert_to_tensor(proxies_by_class, tf.float32)
    num = proxies.shape[1]
    if num is None or num < 2:
        return tf.zeros(tf.shape(proxies)[:1], tf.float32)
    dists = tf.sqrt(batched_squared_distances(proxies, proxies))  # [C, K, K], zero diagonal
    return tf.reduce_sum(dists, axis=[1, 2]) / float(num * (num - 1))


def pool_rounds(pool_size, proxies_per_class):
    """Candidates per class a projection needs: ``b``, or ``b * K`` when ``b < K`` (SPEC §5)."""
    pool_size, proxies_per_class = int(pool_size), int(proxies_per_class)
    return pool_size if pool_size >= proxies_per_class else pool_size * proxies_per_class


@tf.function
def _k_center_with_figures(pool, cover, k):
    """Graph-mode projection math: new proxies ``[C, k, D]`` and the logged figures."""
    new = greedy_k_center(pool, cover, k)
    radius_after = covering_radius(pool, new)
    return new, {
        "radius_before": tf.reduce_mean(covering_radius(pool, cover)),
        "radius_after": tf.reduce_mean(radius_after),
        "radius_after_max": tf.reduce_max(radius_after),
        "proxy_distance_before": tf.reduce_mean(mean_proxy_distance(cover)),
        "proxy_distance_after": tf.reduce_mean(mean_proxy_distance(new)),
    }


# ---------------------------------------------------------------------------------------------
# Proximal term (SPEC §5.1).
# ---------------------------------------------------------------------------------------------


class ProximalTerm:
    """Gradient transform ``g += lambda_t * (w - w_prev)`` for the model weights (SPEC §5.1).

    Equivalent to adding ``lambda_t / 2 * ||w - w_prev||^2`` to the loss. Variables the
    projection does not track (proxies and other loss variables) pass unchanged. Follows the
    trainer's transform protocol ``(grads, variables) -> grads`` (lists, entries may be None).
    """

    def __init__(self, projection):
        self.projection = projection

    def __call__(self, grads, variables):
        anchors = self.projection.anchor_for
        lambda_t = self.projection.lambda_t
        out = []
        for grad, variable in zip(grads, variables):
            anchor = anchors(variable)
            if grad is None or anchor is None:
                out.append(grad)
            else:
                delta = tf.cast(variable, grad.dtype) - tf.cast(anchor, grad.dtype)
                out.append(grad + tf.cast(lambda_t, grad.dtype) * delta)
        return out

    def __repr__(self):
        return "ProximalTerm()"


# ---------------------------------------------------------------------------------------------
# The schedule.
# ---------------------------------------------------------------------------------------------


def _state(value, dtype, name):
    return tf.Variable(tf.constant(value, dtype), trainable=False, name=name)


class AlternatingProjection(tf.Module):
    """Problem-instance schedule, proximal anchor and proxy re-initialization of CCP (SPEC §5).

    Usage (the :class:`ccp.training.Trainer` does this): ``attach(model_variables, ccp_loss)``
    once inside the strategy scope; put :meth:`gradient_transform` first in the gradient chain;
    call :meth:`initialize_proxies` before training and :meth:`on_epoch_end` with each epoch's
    validation MAP@R.

    Args:
      lambda_0: proximal coefficient; ``lambda_t = lambda_0 * decay**t`` in instance ``t >= 1``,
        0 in the first instance (``t = 0``).
      decay: per-instance decay of ``lambda_t``.
      patience: epochs in a row without improvement that end an instance.
      min_iterations: epochs an instance runs before its MAP@R values are compared.
      min_delta: an improvement means ``value > best + min_delta``.
      pool_size: ``b``, pool images per class; a pool must hold ``b`` candidates per class, or
        ``b * K`` when ``b < K`` (see :func:`pool_rounds`). None skips the check.
      random_init: keep the loss's initial (random) proxies instead of the k-center init.
      monitor_lag: 0 = react to the current epoch's MAP@R; 1 = reproduce the reference code's
        ordering (the schedule sees the previous epoch's value and snapshots the weights at the
        end of the epoch that follows it, SPEC §5 "Which epoch's MAP@R").
    """

    def __init__(self, lambda_0=2e-4, decay=1.0, patience=3, min_iterations=1, min_delta=1e-5,
                 pool_size=12, random_init=False, monitor_lag=0, name="alternating_projection"):
        super().__init__(name=name)
        if monitor_lag not in (0, 1):
            raise ValueError(f"monitor_lag must be 0 or 1, got {monitor_lag!r}")
        if int(patience) < 1 or int(min_iterations) < 1:
            raise ValueError(
                f"patience and min_iterations must be >= 1, got {patience} and {min_iterations}")
        if lambda_0 < 0 or decay < 0:
            raise ValueError(f"lambda_0 and decay must be >= 0, got {lambda_0} and {decay}")
        if pool_size is not None and int(pool_size) < 1:
            raise ValueError(f"pool_size must be >= 1 or None, got {pool_size}")
        self.lambda_0 = float(lambda_0)
        self.decay = float(decay)
        self.patience = int(patience)
        self.min_iterations = int(min_iterations)
        self.min_delta = float(min_delta)
        self.pool_size = None if pool_size is None else int(pool_size)
        self.random_init = bool(random_init)
        self.monitor_lag = int(monitor_lag)
        self._attached = False
        self._anchor_index = {}
        self._proxy_loss = None

    # --- wiring --------------------------------------------------------------------------------
    def attach(self, model_variables, proxy_loss=None):
        """Creates the state variables; call once, inside the strategy scope.

        Args:
          model_variables: the model's trainable variables (the proximal term acts on these
            only; proxies are excluded, SPEC §5.1).
          proxy_loss: a CCP loss exposing ``proxies_by_class() -> [C, K, D]`` and
            ``assign_proxies(new)``, or None (then only the proximal schedule runs).
        Returns:
          self.
        """
        model_variables = list(model_variables)
        if self._attached:
            if len(model_variables) != len(self.model_variables) or any(
                    a is not b for a, b in zip(model_variables, self.model_variables)):
                raise ValueError("this AlternatingProjection is already attached to other "
                                 "variables; create one projection per model")
            return self
        if proxy_loss is not None and not (hasattr(proxy_loss, "proxies_by_class")
                                           and hasattr(proxy_loss, "assign_proxies")):
            raise TypeError(
                f"proxy_loss must expose proxies_by_class() and assign_proxies(); got "
                f"{type(proxy_loss).__name__}")
        self.model_variables = model_variables
        self._anchor_index = {id(v): i for i, v in enumerate(model_variables)}
        self.instance = _state(0, tf.int64, "instance")
        self.lambda_t = _state(0.0, tf.float32, "lambda_t")
        self.epochs_in_instance = _state(0, tf.int64, "epochs_in_instance")
        self.epochs_without_improvement = _state(0, tf.int64, "epochs_without_improvement")
        self.best_value = _state(-np.inf, tf.float32, "best_value")
        self.has_best = _state(False, tf.bool, "has_best")
        self.lagged_value = _state(np.nan, tf.float32, "lagged_value")
        self.proxies_initialized = _state(False, tf.bool, "proxies_initialized")
        self.w_prev = [tf.Variable(tf.identity(v), trainable=False, name=f"w_prev_{i}")
                       for i, v in enumerate(model_variables)]
        self.best_weights = [tf.Variable(tf.identity(v), trainable=False, name=f"best_w_{i}")
                             for i, v in enumerate(model_variables)]
        if proxy_loss is not None:
            self._proxy_loss = proxy_loss
            current = tf.convert_to_tensor(proxy_loss.proxies_by_class())
            if current.shape.rank != 3:
                raise ValueError(f"proxies_by_class() must be [C, K, D], got {current.shape}")
            self.best_proxies = tf.Variable(current, trainable=False, name="best_proxies")
        self._attached = True
        return self

    @property
    def has_proxies(self):
        return self._proxy_loss is not None

    def anchor_for(self, variable):
        """The ``w_prev`` variable of a model variable, or None for untracked variables."""
        index = self._anchor_index.get(id(variable))
        return None if index is None else self.w_prev[index]

    def gradient_transform(self):
        """The proximal term as a gradient transform (put it first in the chain)."""
        self._require_attached()
        return ProximalTerm(self)

    def _require_attached(self):
        if not self._attached:
            raise RuntimeError("AlternatingProjection.attach(model_variables, loss) was not called")

    # --- proxies ---------------------------------------------------------------------------------
    @property
    def proxies_per_class(self):
        return int(self._proxy_loss.proxies_by_class().shape[1])

    def _validated_pool(self, pool):
        pool = tf.convert_to_tensor(pool, tf.float32)
        num_classes, per_class, size = self.best_proxies.shape
        expected_rounds = (None if self.pool_size is None
                           else pool_rounds(self.pool_size, per_class))
        if (pool.shape.rank != 3 or pool.shape[0] != num_classes or pool.shape[2] != size
                or (expected_rounds is not None and pool.shape[1] != expected_rounds)):
            wanted = "b" if expected_rounds is None else str(expected_rounds)
            raise ValueError(
                f"proxy pool must be [num_classes={num_classes}, {wanted}, "
                f"embedding_size={size}] (pool_size={self.pool_size}, K={per_class}); got "
                f"{tuple(pool.shape)}")
        return pool

    def _rebuild_proxies(self, pool, cover):
        """Greedy k-center on ``pool`` from ``cover``, assigned to the loss; returns figures."""
        new, figures = _k_center_with_figures(pool, tf.convert_to_tensor(cover, tf.float32),
                                              self.proxies_per_class)
        self._proxy_loss.assign_proxies(new)
        return {"pool_size": int(pool.shape[1]),
                **{key: float(value) for key, value in figures.items()}}

    def initialize_proxies(self, pool_fn):
        """Initial proxies by greedy k-center from an all-zero cover (SPEC §5.4), once.

        Args:
          pool_fn: ``projection_index -> float [C, P, D]`` raw pool embeddings (called with 0),
            or None when ``random_init`` is set.
        Returns:
          an event dict, or None if there was nothing to do (no proxies, already initialized).
        """
        self._require_attached()
        if not self.has_proxies or bool(self.proxies_initialized.numpy()):
            return None
        if self.random_init:
            self.proxies_initialized.assign(True)
            logging.info("CCP: random initial proxies (random_init)")
            return {"event": "proxy_init", "random_init": True}
        if pool_fn is None:
            raise ValueError("CCP proxy initialization needs a proxy pool function "
                             "(proxy_pool_fn) unless random_init=True")
        pool = self._validated_pool(pool_fn(0))
        zero_cover = tf.zeros([pool.shape[0], 1, pool.shape[2]], tf.float32)
        event = {"event": "proxy_init", "instance": 0, **self._rebuild_proxies(pool, zero_cover)}
        self.proxies_initialized.assign(True)
        logging.info("CCP: initial proxies by greedy k-center from a pool of %d per class; "
                     "covering radius %.4f, mean proxy distance %.4f", event["pool_size"],
                     event["radius_after"], event["proxy_distance_after"])
        return event

    # --- the schedule ----------------------------------------------------------------------------
    def _snapshot_best(self):
        for best, variable in zip(self.best_weights, self.model_variables):
            best.assign(variable)
        if self.has_proxies:
            self.best_proxies.assign(self._proxy_loss.proxies_by_class())
        self.has_best.assign(True)

    def on_epoch_end(self, value, pool_fn=None):
        """Feeds one epoch's validation MAP@R to the schedule (SPEC §5.2).

        Args:
          value: this epoch's validation MAP@R (float; None or NaN = no value this epoch).
          pool_fn: ``projection_index -> [C, P, D]`` raw pool embeddings, called only when the
            instance ends and the loss has proxies.
        Returns:
          :class:`ScheduleDecision` ``(action, event)``.
        """
        self._require_attached()
        value = float("nan") if value is None else float(value)
        if self.monitor_lag:
            # The reference reacts to the previous epoch's value (SPEC §5).
            value, lagged = float(self.lagged_value.numpy()), value
            self.lagged_value.assign(lagged)
        epochs = int(self.epochs_in_instance.assign_add(1).numpy())
        if math.isnan(value) or epochs < self.min_iterations:
            return ScheduleDecision(CONTINUE, None)
        if value > float(self.best_value.numpy()) + self.min_delta:
            self.best_value.assign(value)
            self.epochs_without_improvement.assign(0)
            self._snapshot_best()
            return ScheduleDecision(NEW_BEST, None)
        wait = int(self.epochs_without_improvement.assign_add(1).numpy())
        if wait < self.patience:
            return ScheduleDecision(CONTINUE, None)
        return ScheduleDecision(PROJECT, self.project(pool_fn))

    def project(self, pool_fn=None):
        """Ends the current instance: ``w_prev <- best``, new ``lambda_t``, proxies rebuilt.

        Training continues from the current weights (SPEC §5.3); the new proxies are the
        greedy k-center picks from a fresh pool starting from the instance's best proxies.

        Args:
          pool_fn: ``projection_index -> [C, P, D]`` (required when the loss has proxies).
        Returns:
          the projection event (dict of JSON-able values).
        """
        self._require_attached()
        if not bool(self.has_best.numpy()):
            # Only possible when every value of the instance was NaN: anchor at the current point.
            logging.warning("CCP: instance %d ended without a best snapshot; using the current "
                            "weights and proxies", int(self.instance.numpy()))
            self._snapshot_best()
        instance = int(self.instance.numpy()) + 1
        for prev, best in zip(self.w_prev, self.best_weights):
            prev.assign(best)
        self.lambda_t.assign(self.lambda_0 * self.decay ** instance)
        event = {
            "event": "projection",
            "instance": instance,
            "lambda": float(self.lambda_t.numpy()),
            "best_value": float(self.best_value.numpy()),
            "epochs_in_instance": int(self.epochs_in_instance.numpy()),
        }
        if self.has_proxies:
            if pool_fn is None:
                raise ValueError("a CCP projection needs a proxy pool function (proxy_pool_fn)")
            pool = self._validated_pool(pool_fn(instance))
            event.update(self._rebuild_proxies(pool, self.best_proxies))
        self.instance.assign(instance)
        self.epochs_in_instance.assign(0)
        self.epochs_without_improvement.assign(0)
        self.best_value.assign(-np.inf)
        self.has_best.assign(False)
        logging.info(
            "CCP: problem instance %d ended after %d epochs (best MAP@R %.4f); lambda=%.3g; "
            "covering radius %.4f -> %.4f; mean proxy distance %.4f -> %.4f",
            instance - 1, event["epochs_in_instance"], event["best_value"], event["lambda"],
            event.get("radius_before", float("nan")), event.get("radius_after", float("nan")),
            event.get("proxy_distance_before", float("nan")),
            event.get("proxy_distance_after", float("nan")))
        return event

    def state_dict(self):
        """The scalar state as Python values (for logs)."""
        self._require_attached()
        return {
            "instance": int(self.instance.numpy()),
            "lambda": float(self.lambda_t.numpy()),
            "epochs_in_instance": int(self.epochs_in_instance.numpy()),
            "epochs_without_improvement": int(self.epochs_without_improvement.numpy()),
            "best_value": float(self.best_value.numpy()),
        }
