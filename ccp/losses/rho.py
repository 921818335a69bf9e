"""rho-regularization (Roth et al., "Revisiting Training Strategies and Generalization Performance
in Deep Metric Learning", ICML 2020) for the ranking-based losses (triplet, margin).

With probability ``p_switch`` per anchor, the anchor's training tuple is switched as in the
authors' ``rho_distance`` miner: the negative slot is filled with the anchor's POSITIVES and the
positive slot with the anchor itself (distance 0), so the tuple ``(a, a, p)`` pushes samples of the
same class apart and counters the compression of the embedding space. Over all tuples of a
switched anchor: the triplet loss scores ``relu(0 - d(a, p) + m)`` for each positive ``p``; the
margin loss scores each positive with its negative term, plus the self pair with its positive
term ``relu(0 - beta + margin)``. Anchors without a positive are never switched (the miner skips
them too).

The draws are counter-based: ``stateless_uniform(seed=[switch_seed, counter])`` with ``counter``
a non-trainable weight of the layer advanced at every call. Same seed, same switches; the
counter is checkpointed with the layer; every replica of a distribution strategy draws the same
switches for the same (all-gathered) batch, which a ``tf.random.Generator`` created in a strategy
scope would not (it gives each replica its own stream).
"""
import tensorflow as tf


def draw_switches(p_switch, seed, counter, pos_mask):
    """Which anchors are switched this call; advances ``counter``.

    Args:
      p_switch: float probability; seed: int; counter: int64 scalar variable.
      pos_mask: bool ``[N, M]``.
    Returns:
      bool ``[N]``: True with probability ``p_switch`` for anchors that have a positive.
    """
    step = tf.cast(tf.convert_to_tensor(counter), tf.int64)
    seeds = tf.stack([tf.constant(seed, tf.int64), step])
    with tf.control_dependencies([seeds]):
        counter.assign_add(1)
    uniform = tf.random.stateless_uniform(tf.shape(pos_mask)[:1], seed=seeds)
    return tf.logical_and(uniform < p_switch, tf.reduce_any(pos_mask, axis=1))


def switch_rows(dists, pos_mask, neg_mask, switched):
    """Rewrites the switched anchor rows as the tuples ``(a, a, p)`` (see the module docstring).

    Args:
      dists: float ``[N, M]``; pos_mask, neg_mask: bool ``[N, M]``; switched: bool ``[N]``.
    Returns:
      ``(dists, pos_mask, neg_mask)`` of width ``M + 1``: the extra column is the anchor itself at
      distance 0, a positive of the switched rows only; a switched row's positives become its
      negatives and its negatives drop out.
    """
    rows = switched[:, None]
    dists = tf.concat([dists, tf.zeros_like(dists[:, :1])], axis=1)
    new_pos = tf.concat([tf.logical_and(pos_mask, tf.logical_not(rows)), rows], axis=1)
    new_neg = tf.concat([tf.where(rows, pos_mask, neg_mask), tf.zeros_like(rows)], axis=1)
    return dists, new_pos, new_neg


class RhoSwitchMixin:
    """Adds ``p_switch`` / ``switch_seed`` to a Keras pair-loss layer (call after its __init__)."""

    def _init_switch(self, p_switch, switch_seed):
        # Off by default (ccp.defaults.RHO_P_SWITCH); the authors' --miner_rho_distance_cp is
        # ccp.defaults.RHO_P_SWITCH_PAPER = 0.2.
        self.p_switch, self.switch_seed = float(p_switch), int(switch_seed)
        if not 0.0 <= self.p_switch <= 1.0:
            raise ValueError(f"{type(self).__name__}: p_switch must be in [0, 1], got {p_switch}")
        if self.p_switch > 0.0:
            # A non-trainable layer weight: saved in checkpoints, one value for all replicas.
            self.switch_counter = self.add_weight(
                shape=(), dtype="int64", initializer="zeros", trainable=False, autocast=False,
                aggregation="only_first_replica", name="switch_counter")

    def _maybe_switch(self, dists, pos_mask, neg_mask):
        if self.p_switch <= 0.0:
            return dists, pos_mask, neg_mask
        switched = draw_switches(self.p_switch, self.switch_seed, self.switch_counter, pos_mask)
        return switch_rows(dists, pos_mask, neg_mask, switched)

    def _switch_config(self):
        return {"p_switch": self.p_switch, "switch_seed": self.switch_seed}
