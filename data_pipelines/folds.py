"""Class folds of the MLRC protocol (Musgrave et al. 2020; SPEC §6)."""
import dataclasses

import numpy as np

from data_pipelines.records import Records


@dataclasses.dataclass(frozen=True, eq=False)
class Fold:
    """One fold model's data: train on `train`, validate on `val` (None: no validation)."""

    index: int
    train: Records
    val: Records | None


def fold_boundaries(num_classes, num_folds):
    """Class-rank boundaries of the folds, the reference's rule: ``floor(k * C / n)``.

    The reference code cuts its ``C`` training classes at ``linspace(0, C, n + 1)`` truncated to
    int; ``floor(k * C / n)`` is the same sequence in exact integer arithmetic. Group ``k`` holds
    the classes of rank ``boundaries[k] <= r < boundaries[k + 1]``; the larger groups come last
    (e.g. 98 classes -> sizes 24, 25, 24, 25), not first as with ``numpy.array_split``.

    Args:
      num_classes: C >= 0; num_folds: n >= 1.
    Returns:
      int64 ``[n + 1]``, from 0 to C.
    """
    return np.arange(num_folds + 1, dtype=np.int64) * int(num_classes) // int(num_folds)


def class_groups(classes, num_folds):
    """`classes` (sorted [C]) cut into `num_folds` contiguous groups at :func:`fold_boundaries`."""
    classes = np.asarray(classes)
    bounds = fold_boundaries(len(classes), num_folds)
    return [classes[bounds[k]:bounds[k + 1]] for k in range(num_folds)]


def class_folds(records, num_folds=4):
    """The folds of a training split.

    The sorted classes of `records` are cut into `num_folds` contiguous groups of (nearly)
    equal size at the reference's boundaries (:func:`fold_boundaries`); fold k validates on
    group k and trains on the other groups. `num_folds=1` is
    the conventional protocol: one fold training on every class with `val=None`.

    Args:
      records: Records of the training split.
      num_folds: int >= 1, at most the number of classes.
    Returns:
      list of `num_folds` Fold.
    """
    num_folds = int(num_folds)
    if num_folds < 1:
        raise ValueError(f"class_folds: num_folds must be >= 1, got {num_folds}")
    if num_folds == 1:
        return [Fold(index=0, train=records, val=None)]
    if num_folds > records.num_classes:
        raise ValueError(
            f"class_folds: num_folds={num_folds} exceeds the {records.num_classes} classes of "
            "the training split (every fold needs at least one validation class)"
        )
    groups = class_groups(records.classes, num_folds)
    folds = []
    for k, val_classes in enumerate(groups):
        train_classes = np.concatenate([g for j, g in enumerate(groups) if j != k])
        folds.append(Fold(index=k, train=records.subset_classes(train_classes),
                          val=records.subset_classes(val_classes)))
    return folds
