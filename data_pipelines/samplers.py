"""Batch index samplers (pure numpy, deterministic given a seed).

- :class:`MPerClassSampler`: the training batches of SPEC §6, `classes_per_batch` classes x
  `samples_per_class` images; every class is visited once (in a shuffled order) before any class
  repeats, and inside a class images are drawn without replacement until the class is exhausted.
- :func:`one_per_class_indices`: the CCP proxy pool (SPEC §5.3), one fresh image per class per
  round.

Both rest on :class:`ClassStreams`, which keeps one reshuffled stream of members per class and
advances all classes at once with array operations; that makes replaying (and so resuming) a
long run cheap: 100k SOP steps replay in well under a second of numpy work.
"""
import numpy as np
from absl import logging


class ClassStreams:
    """One endless, reshuffled stream of member indices per class, all advanced together.

    Every class walks through a random permutation of its members; when it is exhausted it
    draws a fresh permutation. Members already taken in the current visit are placed at the end
    of that fresh permutation, so one visit of `m` members never repeats a member while the
    class has at least `m` of them (a class with fewer repeats members, necessarily).
    """

    def __init__(self, class_index, num_classes):
        """class_index: int [N], contiguous class of each record (0..num_classes-1, none empty)."""
        class_index = np.asarray(class_index, dtype=np.int64)
        counts = np.bincount(class_index, minlength=num_classes).astype(np.int64)
        if (counts == 0).any():
            raise ValueError(f"ClassStreams: classes {np.flatnonzero(counts == 0)[:10]} are empty")
        width = int(counts.max())
        order = np.argsort(class_index, kind="stable")
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        sorted_class = class_index[order]
        rank = np.arange(order.size) - starts[sorted_class]
        self._members = np.full((num_classes, width), -1, dtype=np.int64)  # [C, W] record ids
        self._members[sorted_class, rank] = order
        self._counts = counts  # [C]
        self._padding = np.arange(width)[None, :] >= counts[:, None]  # [C, W]
        self._perm = np.zeros((num_classes, width), dtype=np.int64)  # [C, W] member slots
        self._pos = counts.copy()  # [C]; "exhausted" so the first draw shuffles every class

    @property
    def counts(self):
        return self._counts

    def draw(self, m, rng):
        """One visit of every class: int64 [C, m] record indices (row c = class c's next m)."""
        num_classes, width = self._perm.shape
        slots = np.empty((num_classes, m), dtype=np.int64)
        filled = np.zeros(num_classes, dtype=np.int64)
        cols = np.arange(m)
        while True:
            need = m - filled
            refill = np.flatnonzero((self._pos >= self._counts) & (need > 0))
            if refill.size:
                keys = rng.random((refill.size, width))
                keys[self._padding[refill]] = 4.0  # padding sorts last, never reached
                taken_row, taken_col = np.nonzero(cols[None, :] < filled[refill][:, None])
                keys[taken_row, slots[refill[taken_row], taken_col]] += 2.0
                self._perm[refill] = np.argsort(keys, axis=1)
                self._pos[refill] = 0
            take = np.minimum(need, self._counts - self._pos)
            rows, cols_taken = np.nonzero(cols[None, :] < take[:, None])
            slots[rows, filled[rows] + cols_taken] = self._perm[rows, self._pos[rows] + cols_taken]
            self._pos += take
            filled += take
            if (filled == m).all():
                break
        return np.take_along_axis(self._members, slots, axis=1)


def _contiguous(labels, where):
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0:
        raise ValueError(f"{where}: labels must be a non-empty 1-D array, got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{where}: labels must be integers, got dtype {labels.dtype}")
    classes, class_index = np.unique(labels, return_inverse=True)
    return classes, class_index.reshape(-1)


def check_batch_shape(labels, classes_per_batch, samples_per_class, where):
    """Validates m-per-class batches of `labels`; warns about classes smaller than m.

    Returns:
      (classes int [C] sorted unique ids, class_index int [N] contiguous class of each record).
    Raises:
      ValueError: P or m < 1, or fewer than P classes.
    """
    classes, class_index = _contiguous(labels, where)
    per_batch, m = int(classes_per_batch), int(samples_per_class)
    if per_batch < 1 or m < 1:
        raise ValueError(
            f"{where}: classes_per_batch and samples_per_class must be >= 1, got "
            f"{classes_per_batch} and {samples_per_class}"
        )
    if classes.shape[0] < per_batch:
        raise ValueError(
            f"{where}: {classes.shape[0]} classes cannot fill batches of "
            f"classes_per_batch={per_batch} distinct classes; lower classes_per_batch or use "
            "more classes"
        )
    counts = np.bincount(class_index, minlength=classes.shape[0])
    short = int((counts < m).sum())
    if short:
        logging.warning(
            "%s: %d of %d classes have fewer than samples_per_class=%d images; their batches "
            "repeat images (drawn from fresh shuffles)", where, short, classes.shape[0], m,
        )
    return classes, class_index


class MPerClassSampler:
    """Endless m-per-class training batches (SPEC §6), seeded and resumable.

    Each batch holds `classes_per_batch` distinct classes with `samples_per_class` record
    indices each, grouped by class (`[c0 x m, c1 x m, ...]`). Classes come in "class epochs":
    a fresh random order of all classes, consumed `classes_per_batch` at a time; a batch that
    spans two class epochs never repeats a class (the classes that end one epoch go to the end
    of the next). Inside a class members are drawn without replacement until exhausted.
    Classes with fewer than `samples_per_class` members are filled from fresh shuffles.

    Args:
      labels: int [N] class ids of the records (any integers).
      classes_per_batch: P, distinct classes per batch (<= number of classes).
      samples_per_class: m, indices per class per batch.
      seed: int; equal seeds give equal streams.
    """

    def __init__(self, labels, classes_per_batch=8, samples_per_class=4, seed=0):
        self.classes, self._class_index = check_batch_shape(
            labels, classes_per_batch, samples_per_class, "MPerClassSampler")
        self.classes_per_batch = int(classes_per_batch)
        self.samples_per_class = int(samples_per_class)
        self.seed = int(seed)

    @property
    def num_classes(self):
        return int(self.classes.shape[0])

    @property
    def batch_size(self):
        return self.classes_per_batch * self.samples_per_class

    def _next_class_epoch(self, rng, epoch, previous_order):
        """Class order [C] of class epoch `epoch`; the previous epoch's classes that share a
        batch with this epoch's first classes are moved to its end."""
        order = rng.permutation(self.num_classes)
        shared = (epoch * self.num_classes) % self.classes_per_batch
        if previous_order is not None and shared:
            tail = np.zeros(self.num_classes, dtype=bool)
            tail[previous_order[-shared:]] = True
            order = np.concatenate([order[~tail[order]], order[tail[order]]])
        return order

    def batches(self, start_step=0):
        """Yields int64 [classes_per_batch * samples_per_class] record indices, forever.

        The batch yielded first is the one an uninterrupted run yields at step `start_step`.
        """
        start_step = int(start_step)
        if start_step < 0:
            raise ValueError(f"MPerClassSampler.batches: start_step must be >= 0, got {start_step}")
        rng = np.random.default_rng(self.seed)
        streams = ClassStreams(self._class_index, self.num_classes)
        num_classes, per_batch, m = self.num_classes, self.classes_per_batch, self.samples_per_class
        first_slot = start_step * per_batch
        epoch = first_slot // num_classes
        order = None
        for e in range(epoch + 1):  # replay: only the per-epoch state, no batch assembly
            order = self._next_class_epoch(rng, e, order)
            visits = streams.draw(m, rng)  # [C, m]: every class's visit of this class epoch
        pos = first_slot - epoch * num_classes
        while True:
            parts = []
            need = per_batch
            while need:
                if pos == num_classes:
                    epoch += 1
                    order = self._next_class_epoch(rng, epoch, order)
                    visits = streams.draw(m, rng)
                    pos = 0
                k = min(need, num_classes - pos)
                parts.append(visits[order[pos:pos + k]].reshape(-1))
                pos += k
                need -= k
            yield parts[0] if len(parts) == 1 else np.concatenate(parts)


def one_per_class_indices(labels, rounds, seed=0):
    """The CCP proxy-pool draw: int64 [rounds, C] record indices, row r = round r.

    Column c belongs to the c-th smallest class id. Each round takes one image per class;
    across rounds a class is drawn without replacement until exhausted, then reshuffled.

    Args:
      labels: int [N] class ids.
      rounds: int >= 1, images per class.
      seed: int.
    """
    rounds = int(rounds)
    if rounds < 1:
        raise ValueError(f"one_per_class_indices: rounds must be >= 1, got {rounds}")
    classes, class_index = _contiguous(labels, "one_per_class_indices")
    streams = ClassStreams(class_index, classes.shape[0])
    rng = np.random.default_rng(seed)
    return np.stack([streams.draw(1, rng)[:, 0] for _ in range(rounds)]).astype(np.int64)
