"""Records of a data set split (image sources + labels) and the splits of one data set.

A :class:`Records` is the boundary type between the loaders and everything downstream (folds,
samplers, tf.data pipelines). It holds either file paths (decoded by the pipelines) or in-memory
uint8 images, together with the data set's original integer class ids. Records read from a
prepared TFDS copy also carry a :class:`TFRecordIndex` (where each example lies in the copy's
TFRecord shards); their `paths` are then the original file names, for messages.
"""
import dataclasses
import functools

import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class TFRecordIndex:
    """Where each record's serialized example lies in a set of TFRecord files (a TFDS copy).

    Attributes:
      files: tuple of F TFRecord file paths, in split order.
      lengths: int64 [F], the number of examples in each file.
      positions: int64 [N], each record's example number in the concatenation of the files.
    """

    files: tuple
    lengths: np.ndarray
    positions: np.ndarray

    def __post_init__(self):
        files = tuple(str(f) for f in self.files)
        lengths = np.asarray(self.lengths, dtype=np.int64).reshape(-1)
        positions = np.asarray(self.positions, dtype=np.int64).reshape(-1)
        if lengths.shape[0] != len(files):
            raise ValueError(f"TFRecordIndex: {len(files)} files but {lengths.shape[0]} lengths")
        if positions.size and (positions.min() < 0 or positions.max() >= lengths.sum()):
            raise ValueError(f"TFRecordIndex: positions must lie in [0, {lengths.sum()})")
        object.__setattr__(self, "files", files)
        object.__setattr__(self, "lengths", lengths)
        object.__setattr__(self, "positions", positions)

    def select(self, indices):
        """The index of the given record positions (int [M])."""
        return TFRecordIndex(self.files, self.lengths, self.positions[indices])

    @staticmethod
    def concatenate(parts):
        """One index over the files of all `parts` (their records in order)."""
        offsets = np.cumsum([0] + [int(p.lengths.sum()) for p in parts[:-1]])
        return TFRecordIndex(
            tuple(f for p in parts for f in p.files),
            np.concatenate([p.lengths for p in parts]),
            np.concatenate([p.positions + o for p, o in zip(parts, offsets)]))


@dataclasses.dataclass(frozen=True, eq=False)
class Records:
    """One split of a data set.

    Attributes:
      labels: int64 [N], the data set's original class ids (e.g. CUB classes 1..200).
      paths: tuple of N absolute image file paths (str), or None for in-memory data.
      images: uint8 [N, H, W, 3] in-memory images, or None when `paths` is given.
      tfrecords: TFRecordIndex of N records, or None. When set, the images are read from
        these TFRecord files (a prepared TFDS copy) and `paths` holds the original file names.
    Exactly one of `paths` and `images` is set.
    """

    labels: np.ndarray
    paths: tuple | None = None
    images: np.ndarray | None = None
    tfrecords: TFRecordIndex | None = None

    def __post_init__(self):
        labels = np.asarray(self.labels)
        if labels.ndim != 1:
            raise ValueError(f"Records.labels must be 1-D [N], got shape {labels.shape}")
        if labels.size and not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"Records.labels must be integers, got dtype {labels.dtype}")
        object.__setattr__(self, "labels", labels.astype(np.int64, copy=False))
        if (self.paths is None) == (self.images is None):
            raise ValueError("Records needs exactly one of `paths` (files) or `images` (in memory)")
        if self.paths is not None:
            paths = tuple(str(p) for p in self.paths)
            if len(paths) != labels.shape[0]:
                raise ValueError(
                    f"Records: {len(paths)} paths but {labels.shape[0]} labels; expected one each"
                )
            object.__setattr__(self, "paths", paths)
            if self.tfrecords is not None and len(self.tfrecords.positions) != len(paths):
                raise ValueError(
                    f"Records: {len(self.tfrecords.positions)} TFRecord positions but "
                    f"{len(paths)} paths; expected one each")
        else:
            if self.tfrecords is not None:
                raise ValueError("Records.tfrecords needs `paths` (the original file names)")
            images = np.asarray(self.images)
            if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
                raise ValueError(
                    "Records.images must be uint8 [N, H, W, 3], got "
                    f"{images.dtype} {images.shape}"
                )
            if images.shape[0] != labels.shape[0]:
                raise ValueError(
                    f"Records: {images.shape[0]} images but {labels.shape[0]} labels; "
                    "expected one each"
                )
            object.__setattr__(self, "images", images)

    def __len__(self):
        return int(self.labels.shape[0])

    @property
    def in_memory(self):
        """True when the images are held in memory (no files to decode)."""
        return self.images is not None

    @functools.cached_property
    def classes(self):
        """int64 [C]: the sorted unique original class ids."""
        return np.unique(self.labels)

    @property
    def num_classes(self):
        return int(self.classes.shape[0])

    def class_indices(self):
        """int32 [N]: position of each record's label in `classes` (contiguous 0..C-1)."""
        return np.searchsorted(self.classes, self.labels).astype(np.int32)

    def select(self, indices):
        """Records of the given record positions (int [M]), in that order."""
        indices = np.asarray(indices, dtype=np.int64)
        if indices.ndim != 1:
            raise ValueError(f"Records.select expects 1-D indices, got shape {indices.shape}")
        if indices.size and (indices.min() < -len(self) or indices.max() >= len(self)):
            raise IndexError(f"Records.select: index out of range for {len(self)} records")
        if self.paths is not None:
            tfrecords = None if self.tfrecords is None else self.tfrecords.select(indices)
            return Records(self.labels[indices], paths=tuple(self.paths[i] for i in indices),
                           tfrecords=tfrecords)
        return Records(self.labels[indices], images=self.images[indices])

    take = select  # records.take(indices), numpy-style name

    def subset_classes(self, class_ids):
        """Records whose label is in `class_ids` (original ids), in their original order.

        Raises:
          ValueError: a requested class has no record (an empty class).
        """
        class_ids = np.unique(np.asarray(class_ids, dtype=np.int64))
        missing = np.setdiff1d(class_ids, self.classes)
        if missing.size:
            shown = ", ".join(str(c) for c in missing[:10])
            raise ValueError(
                f"subset_classes: {missing.size} requested class id(s) not in the records "
                f"(empty classes): {shown}"
            )
        return self.select(np.flatnonzero(np.isin(self.labels, class_ids)))


def concatenate(*parts):
    """One Records holding `parts` in order.

    Args:
      *parts: Records of one kind (all file-backed or all in memory); a single list or tuple of
        Records is accepted too.
    """
    if len(parts) == 1 and isinstance(parts[0], (list, tuple)):
        parts = tuple(parts[0])
    if not parts:
        raise ValueError("concatenate needs at least one Records")
    labels = np.concatenate([p.labels for p in parts])
    if all(p.tfrecords is not None for p in parts):
        return Records(labels, paths=tuple(path for p in parts for path in p.paths),
                       tfrecords=TFRecordIndex.concatenate([p.tfrecords for p in parts]))
    if any(p.tfrecords is not None for p in parts):
        raise ValueError("concatenate cannot mix TFRecord-backed records with other records")
    if all(p.paths is not None for p in parts):
        return Records(labels, paths=tuple(path for p in parts for path in p.paths))
    if all(p.images is not None for p in parts):
        return Records(labels, images=np.concatenate([p.images for p in parts]))
    raise ValueError("concatenate cannot mix file records and in-memory records")


@dataclasses.dataclass(frozen=True, eq=False)
class DatasetSplits:
    """The class-disjoint splits of one data set (SPEC §7).

    Attributes:
      name: registry name ("cub", "cars196", "sop", "inshop", "digits").
      train: training split (its classes are the ones folds are cut from).
      test: test split; for In-shop the concatenation query + gallery.
      query, gallery: In-shop's evaluation split (query vs gallery), else None.
      validation: a held-out split of the train classes (CUB's closed set), else None.
    """

    name: str
    train: Records
    test: Records
    query: Records | None = None
    gallery: Records | None = None
    validation: Records | None = None

    def __post_init__(self):
        if (self.query is None) != (self.gallery is None):
            raise ValueError("DatasetSplits: query and gallery must be given together")
