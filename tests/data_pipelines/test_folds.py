"""MLRC contiguous class folds, at the reference code's boundaries."""
import numpy as np
import pytest

import data_pipelines
from data_pipelines import folds as folds_lib
from data_pipelines.records import Records


def _records(num_classes, per_class=2):
    labels = np.repeat(np.arange(100, 100 + num_classes), per_class)
    rng = np.random.default_rng(0)
    labels = labels[rng.permutation(len(labels))]
    return Records(labels=labels, paths=tuple(f"/x/{i}.jpg" for i in range(len(labels))))


def test_four_contiguous_folds_at_the_reference_boundaries():
    records = _records(10)
    folds = data_pipelines.class_folds(records, num_folds=4)
    assert [f.index for f in folds] == [0, 1, 2, 3]
    # linspace(0, 10, 5) = 0, 2.5, 5, 7.5, 10 -> 0, 2, 5, 7, 10 (hand-worked).
    expected_val = [[100, 101], [102, 103, 104], [105, 106], [107, 108, 109]]
    for fold, val_classes in zip(folds, expected_val):
        np.testing.assert_array_equal(fold.val.classes, val_classes)
        np.testing.assert_array_equal(np.sort(np.concatenate([fold.train.classes,
                                                              fold.val.classes])),
                                      np.arange(100, 110))
        assert len(fold.train) + len(fold.val) == len(records)
        assert fold.train.num_classes == 10 - len(val_classes)
        assert not set(fold.train.paths) & set(fold.val.paths)


def test_one_fold_is_conventional():
    records = _records(5)
    (fold,) = data_pipelines.class_folds(records, num_folds=1)
    assert fold.val is None and fold.train is records and fold.index == 0


def test_bad_fold_counts():
    with pytest.raises(ValueError, match="exceeds"):
        data_pipelines.class_folds(_records(3), num_folds=4)
    with pytest.raises(ValueError, match=">= 1"):
        data_pipelines.class_folds(_records(3), num_folds=0)


def _reference_boundaries(num_classes, num_folds):
    """The reference code's rule, written as it does it: float linspace truncated to int."""
    return np.linspace(0, num_classes, num_folds + 1).astype(int)


@pytest.mark.parametrize("dataset, num_classes", [("cub", 100), ("cars196", 98),
                                                  ("sop", 11318), ("inshop", 3997)])
def test_boundaries_of_the_four_benchmarks_equal_the_reference(dataset, num_classes):
    expected = _reference_boundaries(num_classes, 4)
    np.testing.assert_array_equal(folds_lib.fold_boundaries(num_classes, 4), expected)
    classes = np.arange(7, 7 + num_classes) * 3  # sorted, non-contiguous class ids
    groups = folds_lib.class_groups(classes, 4)
    assert [len(g) for g in groups] == np.diff(expected).tolist()
    np.testing.assert_array_equal(np.concatenate(groups), classes)
    for k, group in enumerate(groups):
        np.testing.assert_array_equal(group, classes[expected[k]:expected[k + 1]])


def test_fold_boundaries_equal_linspace_for_many_class_counts():
    for num_folds in (2, 3, 4, 5, 7):
        for num_classes in range(num_folds, 400):
            np.testing.assert_array_equal(folds_lib.fold_boundaries(num_classes, num_folds),
                                          _reference_boundaries(num_classes, num_folds))
