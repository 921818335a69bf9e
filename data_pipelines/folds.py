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


def class_groups(classes, num_folds):
    """`classes` (sorted [C]) cut into `num_folds` contiguous groups (numpy.array_split sizes)."""
    return np.array_split(np.asarray(classes), num_folds)


def class_folds(records, num_folds=4):
    """The folds of a training split.

    The sorted classes of `records` are cut into `num_folds` contiguous groups of (nearly)
    equal size; fold k validates on group k and trains on the other groups. `num_folds=1` is
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
