"""MLRC contiguous class folds."""
import numpy as np
import pytest

import data_pipelines
from data_pipelines.records import Records


def _records(num_classes, per_class=2):
    labels = np.repeat(np.arange(100, 100 + num_classes), per_class)
    rng = np.random.default_rng(0)
    labels = labels[rng.permutation(len(labels))]
    return Records(labels=labels, paths=tuple(f"/x/{i}.jpg" for i in range(len(labels))))


def test_four_contiguous_folds_like_array_split():
    records = _records(10)
    folds = data_pipelines.class_folds(records, num_folds=4)
    assert [f.index for f in folds] == [0, 1, 2, 3]
    expected_val = [[100, 101, 102], [103, 104, 105], [106, 107], [108, 109]]
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
