"""CCP's alternating projection (SPEC §5): greedy k-center proxies, proximal term, schedule.

The schedule is a small checkpointable state machine (a ``tf.Module`` whose state lives in
variables) fed one validation MAP@R per epoch. It answers what the trainer does next:

- ``CONTINUE``: nothing to do;
- ``NEW_BEST``: the instance's best weights and proxies were just snapshotted;
- ``PROJECT``: the problem instance ended: ``w_prev <- best``, ``lambda_t`` updated and the proxies
  rebuilt by greedy k-center from a fresh pool of embeddings (SPEC §5.3).
"""
import math

import numpy as np
import tensorflow as tf
from absl import logging

CONTINUE = "continue"
NEW_BEST = "new_best"
PROJECT = "project"


def _squared_distances_batched(points, centers):
    """``[C, P, D], [C, M, D] -> [C, P, M]`` squared L2 (expanded form, as the reference)."""
    sq_p = tf.reduce_sum(tf.square(points), axis=-1)[:, :, None]
    sq_c = tf.reduce_sum(tf.square(centers), axis=-1)[:, None, :]
    return sq_p + sq_c - 2.0 * tf.matmul(points, centers, transpose_b=True)


def _greedy_k_center_indices(candidates, centers, k):
    """Indices ``[C, k]`` of the greedy k-center picks and the final min distances ``[C, P]``."""
    num_classes = tf.shape(candidates)[0]
    if centers.shape[1] == 0:
        min_dist = tf.fill(tf.shape(candidates)[:2], tf.constant(np.inf, candidates.dtype))
    else:
        min_dist = tf.reduce_min(_squared_distances_batched(candidates, centers), axis=-1)
    picks = []
    for _ in range(k):
        # top_k breaks ties by the lowest index (SPEC §5: "Ties: the lowest index").
        index = tf.math.top_k(min_dist, k=1).indices[:, 0]
        picked = tf.gather(candidates, index, batch_dims=1)  # [C, D]
        new_dist = _squared_distances_batched(candidates, picked[:, None, :])[:, :, 0]
        min_dist = tf.minimum(min_dist, new_dist)
        picks.append(index)
    del num_classes
    return tf.stack(picks, axis=1), min_dist


def greedy_k_center(candidates, centers, k):
    """Greedy k-center per class (SPEC §5), batched over classes.

    Starting from the cover ``centers``, repeatedly picks the candidate farthest (squared L2)
    from the current cover. Usable inside ``tf.function`` and XLA (``k`` is a Python int).

    Args:
      candidates: float ``[C, P, D]``, the pool of each class.
      centers: float ``[C, M, D]``, the starting cover (``M`` may be 0: then the first pick is
        candidate 0 of each class; an all-zero ``[C, 1, D]`` cover starts from the candidate
        farthest from the origin).
      k: number of picks.
    Returns:
      float ``[C, k, D]``, the picked candidates in pick order.
    """
    candidates = tf.convert_to_tensor(candidates, tf.float32)
    centers = tf.convert_to_tensor(centers, tf.float32)
    indices, _ = _greedy_k_center_indices(candidates, centers, int(k))
    return tf.gather(candidates, indices, batch_dims=1)


def covering_radius(points, centers):
    """Per class, the largest distance from a point to its nearest center.

    Args:
      points: float ``[C, P, D]``; centers: float ``[C, M, D]`` with ``M >= 1``.
    Returns:
      float ``[C]`` (L2 distance, not squared).
    """
    points = tf.convert_to_tensor(points, tf.float32)
    centers = tf.convert_to_tensor(centers, tf.float32)
    nearest = tf.reduce_min(_squared_distances_batched(points, centers), axis=-1)
    return tf.sqrt(tf.nn.relu(tf.reduce_max(nearest, axis=-1)))


def mean_proxy_distance(proxies_by_class):
    """Mean L2 distance between distinct proxies of the same class, averaged over classes.

    Args:
      proxies_by_class: float ``[C, K, D]``.
    Returns:
      python float (0.0 when ``K == 1``).
    """
    proxies = np.asarray(proxies_by_class, np.float64)
    num_proxies = proxies.shape[1]
    if num_proxies < 2:
        return 0.0
    diff = proxies[:, :, None, :] - proxies[:, None, :, :]
    dists = np.sqrt(np.sum(diff**2, axis=-1))
    return float(dists.sum() / (proxies.shape[0] * num_proxies * (num_proxies - 1)))


def _non_trainable(value, name):
    return tf.Variable(value, trainable=False, name=name)


class AlternatingProjection(tf.Module):
    """Instance schedule, proximal anchor and proxy re-initialization of CCP (SPEC §5).

    Args:
      lambda_0: proximal coefficient from the second problem instance on (0 in the first).
      decay: ``lambda_t = lambda_0 * decay**t`` for instance ``t >= 1``.
      patience: epochs without improvement of the instance's best MAP@R that end an instance.
      min_iterations: epochs an instance runs before improvements are tracked.
      min_delta: improvement means ``value > best + min_delta``.
      random_init: keep the loss's random initial proxies instead of the k-center init.
      monitor_lag: 1 reproduces the reference ordering (the schedule sees the previous epoch's
        value and snapshots the "best" weights one epoch late); 0 uses the current epoch.
    """

    def __init__(self, lambda_0=2e-4, decay=1.0, patience=3, min_iterations=1, min_delta=1e-5,
                 random_init=False, monitor_lag=0, name="alternating_projection"):
        super().__init__(name=name)
        if monitor_lag not in (0, 1):
            raise ValueError(f"monitor_lag must be 0 or 1, got {monitor_lag}")
        if patience < 1 or min_iterations < 1:
            raise ValueError("patience and min_iterations must be >= 1")
        self.lambda_0 = float(lambda_0)
        self.decay = float(decay)
        self.patience = int(patience)
        self.min_iterations = int(min_iterations)
        self.min_delta = float(min_delta)
        self.random_init = bool(random_init)
        self.monitor_lag = int(monitor_lag)
        self.instance = _non_trainable(tf.constant(0, tf.int64), "instance")
        self.lambda_t = _non_trainable(tf.constant(0.0, tf.float32), "lambda_t")
        self.epochs_in_instance = _non_trainable(tf.constant(0, tf.int64), "epochs_in_instance")
        self.epochs_without_improvement = _non_trainable(tf.constant(0, tf.int64), "wait")
        self.best_value = _non_trainable(tf.constant(-np.inf, tf.float32), "best_value")
        self.previous_value = _non_trainable(tf.constant(np.nan, tf.float32), "previous_value")
        self.proxies_initialized = _non_trainable(tf.constant(False), "proxies_initialized")
        self.model_variables = []
        self.w_prev = []
        self.best_weights = []
        self.best_proxies = None
        self._loss = None

    # --- wiring -----------------------------------------------------------------------------
    def attach(self, model_variables, loss=None):
        """Creates ``w_prev`` and the best snapshot for these variables (call in strategy scope).

        Args:
          model_variables: the model's trainable variables (proxies excluded, SPEC §5.1).
          loss: a loss with ``proxies_by_class()`` / ``assign_proxies()``, or None.
        """
        self.model_variables = list(model_variables)
        self.w_prev = [_non_trainable(tf.convert_to_tensor(v), f"w_prev_{i}")
                       for i, v in enumerate(self.model_variables)]
        self.best_weights = [_non_trainable(tf.convert_to_tensor(v), f"best_{i}")
                             for i, v in enumerate(self.model_variables)]
        if loss is not None and hasattr(loss, "proxies_by_class"):
            self._loss = loss
            # Zero starting cover for the initial k-center (SPEC §5.4), as the reference.
            self.best_proxies = _non_trainable(tf.zeros_like(loss.proxies_by_class()), "best_proxies")
        return self

    @property
    def has_proxies(self):
        return self._loss is not None

    # --- proximal term (SPEC §5.1) ----------------------------------------------------------
    def proximal_gradients(self, grads):
        """``grad + lambda_t * (w - w_prev)`` for each model variable (same order as attach)."""
        return [g + self.lambda_t * (tf.cast(v, g.dtype) - w) if g is not None else None
                for g, v, w in zip(grads, self.model_variables, self.w_prev)]

    # --- proxies ----------------------------------------------------------------------------
    def _rebuild_proxies(self, pool, start_cover):
        """Greedy k-center on ``pool`` [C, P, D] from ``start_cover``; returns log figures."""
        pool = tf.convert_to_tensor(pool, tf.float32)
        proxies_per_class = int(self._loss.proxies_by_class().shape[1])
        expected = tuple(self._loss.proxies_by_class().shape)
        if pool.shape[0] != expected[0] or pool.shape[2] != expected[2]:
            raise ValueError(
                f"proxy pool has shape {tuple(pool.shape)}; expected [num_classes={expected[0]}, "
                f"pool, embedding_size={expected[2]}]"
            )
        new = greedy_k_center(pool, start_cover, proxies_per_class)
        radius_before = float(tf.reduce_mean(covering_radius(pool, start_cover)))
        radius_after = float(tf.reduce_mean(covering_radius(pool, new)))
        self._loss.assign_proxies(new)
        return {
            "radius_before": radius_before,
            "radius_after": radius_after,
            "mean_proxy_distance": mean_proxy_distance(new.numpy()),
            "pool_size": int(pool.shape[1]),
        }

    def initialize_proxies(self, proxy_pool_fn, model):
        """Initial proxies from a pool with an all-zero starting cover (SPEC §5.4).

        Returns an event dict (or None when nothing was done).
        """
        if not self.has_proxies or bool(self.proxies_initialized.numpy()):
            return None
        self.proxies_initialized.assign(True)
        if self.random_init or proxy_pool_fn is None:
            return None
        pool = proxy_pool_fn(model, 0)
        event = {"event": "proxy_init", **self._rebuild_proxies(pool, self.best_proxies)}
        logging.info("CCP: initial proxies by greedy k-center, covering radius %.4f",
                     event["radius_after"])
        return event

    # --- schedule ---------------------------------------------------------------------------
    def _snapshot_best(self):
        for best, v in zip(self.best_weights, self.model_variables):
            best.assign(v)
        if self.has_proxies:
            self.best_proxies.assign(self._loss.proxies_by_class())

    def on_epoch_end(self, value, model=None, proxy_pool_fn=None):
        """Feeds one validation MAP@R; returns ``(action, event_or_None)``.

        Args:
          value: this epoch's validation MAP@R (float).
          model, proxy_pool_fn: used for the proxy rebuild when the instance ends.
        """
        if self.monitor_lag:
            value, previous = float(self.previous_value.numpy()), value
            self.previous_value.assign(previous)
        self.epochs_in_instance.assign_add(1)
        if value is None or math.isnan(value):
            return CONTINUE, None
        if int(self.epochs_in_instance.numpy()) < self.min_iterations:
            return CONTINUE, None
        if value > float(self.best_value.numpy()) + self.min_delta:
            self.best_value.assign(value)
            self.epochs_without_improvement.assign(0)
            self._snapshot_best()
            return NEW_BEST, None
        self.epochs_without_improvement.assign_add(1)
        if int(self.epochs_without_improvement.numpy()) < self.patience:
            return CONTINUE, None
        return PROJECT, self.project(model, proxy_pool_fn)

    def project(self, model=None, proxy_pool_fn=None):
        """Ends the instance: ``w_prev <- best``, new ``lambda_t``, proxies rebuilt (SPEC §5.3)."""
        for prev, best in zip(self.w_prev, self.best_weights):
            prev.assign(best)
        instance = int(self.instance.assign_add(1).numpy())
        self.lambda_t.assign(self.lambda_0 * self.decay**instance)
        event = {
            "event": "projection",
            "instance": instance,
            "lambda": float(self.lambda_t.numpy()),
            "best_value": float(self.best_value.numpy()),
        }
        if self.has_proxies and proxy_pool_fn is not None:
            pool = proxy_pool_fn(model, instance)
            event.update(self._rebuild_proxies(pool, self.best_proxies))
        self.epochs_in_instance.assign(0)
        self.epochs_without_improvement.assign(0)
        self.best_value.assign(-np.inf)
        logging.info(
            "CCP: problem instance %d ended (best MAP@R %.4f); lambda=%.3g; covering radius "
            "%.4f -> %.4f", instance, event["best_value"], event["lambda"],
            event.get("radius_before", float("nan")), event.get("radius_after", float("nan")),
        )
        return event
