"""In-graph m-per-class batch indices: tf.data and TF ops only (runs on a TPU host, no GIL).

The sequence (documented here; it differs from samplers.MPerClassSampler's numpy stream but has
the same guarantees, and any step is computed directly from (seed, step), with no replay):

* Classes. The class slots of the run, P per batch, are cut into *class epochs* of C slots,
  each a random order of all C classes, so every class is visited once before any repeats.
  P consecutive class epochs form a *round* of exactly C batches; round k's P orders are drawn
  from (seed, k) alone (one [P, C] draw of sort keys). Inside a round, a batch that straddles
  two class epochs never holds a class twice: the classes of epoch j-1 in that batch go to the
  end of epoch j's order (C >= P makes that always possible). Rounds start on a batch
  boundary, so batch s needs only round s // C.
* Members. Class c's e-th visit (the one in class epoch e) takes m members. Its member stream
  is cut the same way: *member epochs* of n_c slots, each a random order of the class's n_c
  members (without replacement until exhausted), m member epochs forming a round of n_c visits
  drawn from (seed, c, round); a visit that straddles two member epochs never repeats a member
  when n_c >= m (classes smaller than m repeat members: a visit spans several member epochs).
* Randomness: stateless (Philox) keys folded from [seed, -1] (classes) and [seed, -2] (members);
  the augmentation uses [seed, step * B + position] (pipelines.py), as the numpy sampler does.
"""
import numpy as np
import tensorflow as tf

from data_pipelines import samplers

CLASS_STREAM = -1  # second seed word of the class orders (the augmentation uses >= 0)
MEMBER_STREAM = -2  # second seed word of the member orders
_MOVED = 2.0  # sort-key offset: classes/members pushed to the end of an order
_PADDING = 4.0  # sort-key offset of the padding slots of small classes (never reached)


def _keys(seed, shape):
    """float64 `shape` uniform sort keys of a stateless seed int64 [2]."""
    return tf.random.stateless_uniform(shape, seed=seed, dtype=tf.float64)


def _plain(fn):
    """`fn` traced as written (its loops are over Python ints): no AutoGraph conversion."""
    return tf.autograph.experimental.do_not_convert(fn)


def _order(keys):
    return tf.argsort(keys, stable=True)


def _moved_mask(previous_order, count, valid):
    """bool [W]: the slots at ranks [valid - count, valid) of `previous_order` ([W] slots)."""
    rank = tf.cast(tf.math.invert_permutation(previous_order), tf.int64)
    valid, count = tf.cast(valid, tf.int64), tf.cast(count, tf.int64)
    return (rank >= valid - count) & (rank < valid)


def class_round(seed, round_index, num_classes, classes_per_batch):
    """int32 [C, P]: the classes of the C batches of round `round_index` (row b = batch b).

    Args:
      seed: int64 scalar; round_index: int64 scalar; num_classes C >= classes_per_batch P.
    """
    base = tf.stack([tf.cast(seed, tf.int64), tf.constant(CLASS_STREAM, tf.int64)])
    round_seed = tf.random.experimental.stateless_fold_in(base, tf.cast(round_index, tf.int64))
    keys = _keys(round_seed, [classes_per_batch, num_classes])  # [P, C]: one row per epoch
    orders, previous = [], None
    for j in range(classes_per_batch):
        epoch_keys = keys[j]
        shared = (j * num_classes) % classes_per_batch  # epoch j-1 slots in epoch j's 1st batch
        if shared:
            epoch_keys += _MOVED * tf.cast(_moved_mask(previous, shared, num_classes),
                                           tf.float64)
        previous = _order(epoch_keys)
        orders.append(previous)
    return tf.reshape(tf.concat(orders, axis=0), [num_classes, classes_per_batch])


def member_visit(seed, class_id, visit, members, offsets, counts, samples_per_class, width):
    """int64 [m]: the records of class `class_id`'s visit number `visit`.

    Args:
      members: int64 [N] record indices sorted by class; offsets, counts: int64 [C] (each
        class's first row in `members` and its size); width: static max count.
    """
    m = samples_per_class
    count = tf.gather(counts, class_id)
    round_index, in_round = visit // count, visit % count
    base = tf.random.experimental.stateless_fold_in(
        tf.stack([tf.cast(seed, tf.int64), tf.constant(MEMBER_STREAM, tf.int64)]),
        tf.cast(class_id, tf.int64))
    padding = tf.range(width, dtype=tf.int64) >= count
    keys = _keys(tf.random.experimental.stateless_fold_in(base, round_index), [m, width])
    keys += _PADDING * tf.cast(padding, tf.float64)  # [m, W]: one row per member epoch
    orders, previous = [], None
    for j in range(m):
        epoch_keys = keys[j]
        if j:
            shared = (j * count) % m  # member epoch j-1 slots in the visit that straddles
            epoch_keys += _MOVED * tf.cast(_moved_mask(previous, shared, count), tf.float64)
        previous = _order(epoch_keys)
        orders.append(previous)
    slots = in_round * m + tf.range(m, dtype=tf.int64)  # positions in the round's m epochs
    slot = tf.gather_nd(tf.stack(orders), tf.stack([slots // count, slots % count], axis=1))
    return tf.gather(members, tf.gather(offsets, class_id) + tf.cast(slot, tf.int64))


def image_indices(labels, classes_per_batch=8, samples_per_class=4, seed=0, start_step=0):
    """Endless m-per-class stream of single records, built in the graph (module docstring).

    Args:
      labels: int [N] class ids of the records (any integers).
      classes_per_batch: P distinct classes per batch (<= C); samples_per_class: m.
      seed: int; start_step: the first step produced (computed directly, nothing replayed).
    Returns:
      tf.data.Dataset of (step, position in batch, record index), all int64 scalars: batch
      `step` is the next P * m elements, positions 0..P*m-1, class-major groups of m.
    """
    _, class_index = samplers.check_batch_shape(labels, classes_per_batch, samples_per_class,
                                                "in-graph m-per-class sampler")
    start_step = int(start_step)
    if start_step < 0:
        raise ValueError(f"in-graph sampler: start_step must be >= 0, got {start_step}")
    per_batch, m = int(classes_per_batch), int(samples_per_class)
    num_classes = int(class_index.max()) + 1
    counts = np.bincount(class_index, minlength=num_classes).astype(np.int64)
    members = tf.constant(np.argsort(class_index, kind="stable").astype(np.int64))
    offsets = tf.constant(np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64))
    width, counts = int(counts.max()), tf.constant(counts)
    seed = tf.constant(int(seed), tf.int64)
    forever = np.iinfo(np.int64).max

    first_round, skip = divmod(start_step, num_classes)
    rounds = tf.data.Dataset.range(first_round, forever)
    classes = rounds.map(_plain(lambda k: class_round(seed, k, num_classes, per_batch)))
    classes = classes.unbatch()
    steps = tf.data.Dataset.range(first_round * num_classes, forever)
    batches = tf.data.Dataset.zip(steps, classes).skip(skip)
    slots = batches.flat_map(_plain(lambda step, class_ids: tf.data.Dataset.from_tensor_slices((
        tf.fill([per_batch], step), tf.range(per_batch, dtype=tf.int64),
        tf.cast(class_ids, tf.int64)))))

    @_plain
    def visit(step, slot, class_id):
        epoch = (step * per_batch + slot) // num_classes  # = the visit number of class_id
        records = member_visit(seed, class_id, epoch, members, offsets, counts, m, width)
        return tf.fill([m], step), slot * m + tf.range(m, dtype=tf.int64), records

    return slots.map(visit, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).unbatch()
