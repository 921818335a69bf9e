"""m-per-class batches and the one-per-class proxy pool, checked over many batches.

The guarantees are checked for both samplers: the numpy MPerClassSampler and the in-graph one
(data_pipelines.ingraph, a different sequence with the same guarantees).
"""
import itertools
import logging
import time

import numpy as np
import pytest

from data_pipelines import ingraph
from data_pipelines.samplers import MPerClassSampler, one_per_class_indices

SAMPLERS = ("numpy", "ingraph")


def _labels(sizes, first_id=100):
    """Shuffled labels with sizes[c] elements of class first_id + 3 * c (non-contiguous ids)."""
    labels = np.repeat(first_id + 3 * np.arange(len(sizes)), sizes)
    return labels[np.random.default_rng(1).permutation(len(labels))]


def _take(kind, labels, P, m, seed, steps, start_step=0):
    """int64 [steps, P * m]: the batches from `start_step` of sampler `kind`."""
    if kind == "numpy":
        sampler = MPerClassSampler(labels, P, m, seed=seed)
        return np.stack(list(itertools.islice(sampler.batches(start_step), steps)))
    dataset = ingraph.image_indices(labels, P, m, seed=seed, start_step=start_step).batch(P * m)
    return np.stack([indices.numpy() for _, _, indices in dataset.take(steps)])


@pytest.mark.parametrize("kind", SAMPLERS)
def test_batch_composition_and_class_epochs(kind):
    sizes = [5, 6, 7, 8, 9, 10, 11]  # 7 classes, P = 3: class epochs straddle batches
    labels = _labels(sizes)
    P, m = 3, 4
    batches = _take(kind, labels, P, m, 3, 70)
    assert batches.shape == (70, P * m) and batches.dtype == np.int64
    sequence = []
    for batch in batches:
        groups = labels[batch].reshape(P, m)
        assert (groups == groups[:, :1]).all()  # class-major groups of one class
        assert len(set(groups[:, 0])) == P  # no class twice in a batch
        sequence.extend(groups[:, 0])
    classes = np.unique(labels)
    for start in range(0, len(sequence) - len(classes) + 1, len(classes)):
        # Every class once per class epoch, in a shuffled order.
        assert sorted(sequence[start:start + len(classes)]) == list(classes)
    first_epochs = [tuple(sequence[i:i + 7]) for i in range(0, 28, 7)]
    assert len(set(first_epochs)) > 1


@pytest.mark.parametrize("kind", SAMPLERS)
def test_within_class_without_replacement_until_exhausted(kind):
    labels = _labels([5, 6, 7, 9, 4])
    P, m = 2, 4
    batches = _take(kind, labels, P, m, 0, 200)
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        stream = [i for batch in batches for i in batch if labels[i] == cls]
        visits = np.reshape(stream, (-1, m))
        assert all(len(set(v)) == m for v in visits)  # no repeat inside a visit
        n = len(members)
        for start in range(0, len(stream) - n + 1, n):  # every n draws: each member once
            assert sorted(stream[start:start + n]) == sorted(members)
    counts = np.bincount(np.searchsorted(np.unique(labels), labels[batches.reshape(-1)]))
    assert counts.max() - counts.min() <= P * m  # classes visited evenly


@pytest.mark.parametrize("kind", SAMPLERS)
def test_reproducible_and_seed_dependent(kind):
    labels = _labels([6] * 10)
    a = _take(kind, labels, 4, 3, 7, 30)
    b = _take(kind, labels, 4, 3, 7, 30)
    c = _take(kind, labels, 4, 3, 8, 30)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("kind", SAMPLERS)
def test_resume_equals_uninterrupted(kind):
    labels = _labels([3, 5, 6, 7, 2, 9, 4])
    full = _take(kind, labels, 3, 4, 11, 65)
    for start_step in (7, 50):  # in-graph: a round boundary (C = 7 batches), then mid-round
        np.testing.assert_array_equal(_take(kind, labels, 3, 4, 11, 15, start_step),
                                      full[start_step:start_step + 15])


@pytest.mark.parametrize("kind", SAMPLERS)
def test_short_classes_fill_and_warn(kind, caplog):
    labels = _labels([1, 2, 6, 6])
    with caplog.at_level(logging.WARNING):
        batches = _take(kind, labels, 4, 4, 0, 20)
    assert "2 of 4 classes" in caplog.text
    for batch in batches:
        groups = labels[batch].reshape(4, 4)
        assert sorted(groups[:, 0]) == sorted(np.unique(labels))
        assert (groups == groups[:, :1]).all()
    two = np.flatnonzero(labels == 103)
    drawn = [i for batch in batches for i in batch if labels[i] == 103]
    assert set(drawn) == set(two)
    for visit in np.reshape(drawn, (-1, 4)):  # each visit uses both members of a 2-image class
        assert set(visit) == set(two)


@pytest.mark.parametrize("kind", SAMPLERS)
def test_too_few_classes(kind):
    with pytest.raises(ValueError, match=r"3 classes.*classes_per_batch=8"):
        _take(kind, _labels([4, 4, 4]), 8, 4, 0, 1)


@pytest.mark.parametrize("kind", SAMPLERS)
def test_resume_is_fast_at_sop_scale(kind):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(11318), rng.integers(2, 10, 11318))  # SOP-like: ~60k images
    begin = time.perf_counter()
    batch, = _take(kind, labels, 8, 4, 0, 1, start_step=100_000)
    elapsed = time.perf_counter() - begin
    assert batch.shape == (32,)
    assert elapsed < 10.0, f"resuming at step 100k took {elapsed:.1f} s"


def test_one_per_class_rounds():
    labels = _labels([3, 5, 2, 4])
    classes = np.unique(labels)
    table = one_per_class_indices(labels, rounds=10, seed=4)
    assert table.shape == (10, 4) and table.dtype == np.int64
    np.testing.assert_array_equal(labels[table], np.broadcast_to(classes, (10, 4)))
    for c, cls in enumerate(classes):
        members = sorted(np.flatnonzero(labels == cls))
        n = len(members)
        column = list(table[:, c])
        for start in range(0, 10 - n + 1, n):  # without replacement until exhausted
            assert sorted(column[start:start + n]) == members
    np.testing.assert_array_equal(table, one_per_class_indices(labels, rounds=10, seed=4))
    assert not np.array_equal(table, one_per_class_indices(labels, rounds=10, seed=5))
