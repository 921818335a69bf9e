"""Helpers shared by the data set loaders: finding the root folder, reading annotation files,
the official class splits, and the checks every file loader runs before it returns (SPEC §7):
listed files exist, the published sizes match, every image decodes (images.check_images).
"""
import dataclasses
import os

import numpy as np
from absl import logging

from data_pipelines import images
from data_pipelines.records import DatasetSplits, Records

SHOWN = 5  # missing files / class ids named in a message


class IncompleteDatasetError(ValueError):
    """A data set copy that differs from the published one (counts, classes, files)."""


@dataclasses.dataclass(frozen=True)
class Checks:
    """What a file loader checks before returning (the keyword options of every loader).

    Attributes:
      allow_partial: accept a copy that differs from the published sizes (missing image files
        are dropped, count mismatches logged) instead of raising IncompleteDatasetError.
      skip_corrupt: drop images that do not decode (one warning) instead of raising
        images.CorruptImageError.
      check_files: stat every listed image.
      check_images: fully decode every image once (images.check_images; cached on disk).
      cache_dir: the decode cache folder (None: images.default_cache_dir(); "": no cache).
      report_path: where the list of corrupt files is written (None: next to the cache).
    """

    allow_partial: bool = False
    skip_corrupt: bool = False
    check_files: bool = True
    check_images: bool = True
    cache_dir: str | None = None
    report_path: str | None = None


CHECK_OPTIONS = tuple(field.name for field in dataclasses.fields(Checks))


@dataclasses.dataclass(frozen=True)
class SplitSize:
    """The published size of one split.

    Attributes:
      images: number of images.
      classes: number of classes (None: not checked); set from `class_ids` when given.
      class_ids: the split's class ids when the data set fixes them (CUB, Cars196), else None.
    """

    images: int
    classes: int | None = None
    class_ids: tuple | None = None

    def __post_init__(self):
        if self.class_ids is not None:
            ids = tuple(int(c) for c in self.class_ids)
            object.__setattr__(self, "class_ids", ids)
            object.__setattr__(self, "classes", len(ids))


def resolve_root(data_dir, marker, subfolders, dataset, layout):
    """The data set's root folder: `data_dir` itself or one of its canonical sub-folders.

    Args:
      data_dir: the folder the user gave (the data set's root or its parent).
      marker: a path relative to the root that must exist there (e.g. "images.txt").
      subfolders: canonical root folder names to look for inside `data_dir`.
      dataset: human-readable data set name for messages.
      layout: description of the expected layout for messages ("a folder holding ...").
    Returns:
      Absolute path (str) of the root folder.
    Raises:
      ValueError: `data_dir` is None or empty.
      FileNotFoundError: neither `data_dir` nor a canonical sub-folder holds `marker`.
    """
    if not data_dir:
        raise ValueError(
            f"{dataset}: data_dir is required (looking for {marker}); expected {layout}"
        )
    data_dir = os.path.abspath(os.path.expanduser(str(data_dir)))
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(
            f"{dataset}: data_dir {data_dir} is not a folder (looking for {marker}); "
            f"expected {layout}"
        )
    candidates = [data_dir] + [os.path.join(data_dir, name) for name in subfolders]
    for root in candidates:
        if os.path.exists(os.path.join(root, marker)):
            return root
    raise FileNotFoundError(
        f"{dataset}: missing {os.path.join(data_dir, marker)} (also looked in the sub-folders "
        f"{', '.join(subfolders)}); expected {layout}"
    )


def require_file(root, relative, dataset, layout):
    """Absolute path of `root/relative`; FileNotFoundError naming it when it is absent."""
    path = os.path.join(root, relative)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{dataset}: missing annotation file {path}; expected {layout}")
    return path


def read_numbered_rows(path, num_fields, skip_lines=0, dataset=""):
    """``[(line number, fields)]``: whitespace-separated rows of a text file, each as a list of
    `num_fields` strings, with its 1-based line number (for messages).

    The last field keeps any inner spaces (paths with spaces). Blank lines are ignored.
    Raises ValueError naming the file and line when a row has fewer fields.
    """
    rows = []
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if line_number <= skip_lines:
                continue
            line = line.strip()
            if not line:
                continue
            fields = line.split(maxsplit=num_fields - 1)
            if len(fields) != num_fields:
                raise ValueError(
                    f"{dataset}: {path} line {line_number}: expected {num_fields} "
                    f"whitespace-separated fields, got {line!r}"
                )
            rows.append((line_number, fields))
    return rows


def read_rows(path, num_fields, skip_lines=0, dataset=""):
    """The fields of :func:`read_numbered_rows` without the line numbers."""
    return [fields for _, fields in read_numbered_rows(path, num_fields, skip_lines, dataset)]


def check_unique(keys, places, what, dataset, values=None, value_what="class"):
    """Refuses an annotation that lists the same key twice (an image id, an image path).

    Args:
      keys: the key of each entry, in file order.
      places: where each entry is, for messages ("/path/file.txt line 7").
      what: the key's name ("image id"); dataset: display name.
      values: the label of each entry, or None; a repeat with another label is called a
        conflict (the message names both labels).
      value_what: the label's name ("class").
    Raises:
      ValueError: naming the second entry's place and the first's.
    """
    first = {}
    for index, key in enumerate(keys):
        if key not in first:
            first[key] = index
            continue
        earlier = first[key]
        if values is not None and values[index] != values[earlier]:
            detail = (f"with {value_what} {values[index]}, conflicting with {value_what} "
                      f"{values[earlier]} at {places[earlier]}")
        else:
            detail = f"already at {places[earlier]}"
        raise ValueError(f"{dataset}: {places[index]}: {what} {key} is listed twice ({detail}); "
                         "each must be listed once: remove or correct one of the two lines")


def parse_int(text, path, what):
    """int(text); ValueError naming the file and the field when it is not an integer."""
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{path}: expected an integer {what}, got {text!r}") from None


def present_files(paths, dataset, checks):
    """bool [N]: which listed image files exist (all True when not `checks.check_files`).

    Raises:
      FileNotFoundError: files are missing and not `checks.allow_partial` (the message lists
        the first few and the count); with `allow_partial` one warning names them instead.
    """
    if not checks.check_files:
        return np.ones(len(paths), dtype=bool)
    present = np.array([os.path.isfile(p) for p in paths], dtype=bool)
    missing = [p for p, here in zip(paths, present) if not here]
    if missing:
        listing = "\n  ".join(missing[:SHOWN])
        message = (f"{dataset}: {len(missing)} of {len(paths)} image files listed in the "
                   f"annotations are missing, e.g.\n  {listing}")
        if not checks.allow_partial:
            raise FileNotFoundError(
                f"{message}\npass --allow_partial (allow_partial=True) to use the files that "
                "are there")
        logging.warning("%s\ncontinuing without them (allow_partial)", message)
    return present


def _listed(ids):
    ids = [int(i) for i in ids]
    shown = ", ".join(str(i) for i in ids[:SHOWN])
    return shown + (f", ... ({len(ids)} in all)" if len(ids) > SHOWN else "")


def size_mismatches(expected, found):
    """['<split> images: expected E, found F', ...] for every count that differs.

    Args:
      expected: {split name: SplitSize}.
      found: {split name: Records}.
    """
    problems = []
    for split, size in expected.items():
        records = found[split]
        if len(records) != size.images:
            problems.append(f"{split} images: expected {size.images:,}, found {len(records):,}")
        ids = records.classes.tolist()
        if size.class_ids is not None:
            missing = sorted(set(size.class_ids) - set(ids))
            extra = sorted(set(ids) - set(size.class_ids))
            if missing or extra:
                what = [f"missing class ids {_listed(missing)}"] if missing else []
                what += [f"unexpected class ids {_listed(extra)}"] if extra else []
                problems.append(f"{split} classes: expected {size.classes:,}, found "
                                f"{len(ids):,} ({'; '.join(what)})")
        elif size.classes is not None and len(ids) != size.classes:
            problems.append(f"{split} classes: expected {size.classes:,}, found {len(ids):,}")
    return problems


def check_sizes(dataset, root, expected, found, allow_partial):
    """Compares the splits with their published sizes (SPEC §7).

    Raises:
      IncompleteDatasetError naming every mismatch (split, expected vs found, missing class
      ids), unless `allow_partial`, which logs the same as one warning.
    """
    problems = size_mismatches(expected, found)
    if not problems:
        return
    message = (f"{dataset} at {root} does not have the published size (SPEC §7): "
               + "; ".join(problems))
    if not allow_partial:
        raise IncompleteDatasetError(
            f"{message}\npass --allow_partial (allow_partial=True) to use a partial copy")
    logging.warning("%s; continuing with what is there (allow_partial)", message)


def finish(splits, dataset, root, expected, checks):
    """The checks every file loader ends with: published sizes, then every image decoded.

    Args:
      splits: DatasetSplits as listed (missing files already handled by present_files).
      dataset: display name; root: the data set's folder (messages).
      expected: {split name ("train", "test", "query", "gallery"): SplitSize}.
      checks: Checks.
    Returns:
      `splits`, without corrupt images when `checks.skip_corrupt`.
    """
    found = {"train": splits.train, "test": splits.test, "query": splits.query,
             "gallery": splits.gallery}
    check_sizes(dataset, root, expected, found, checks.allow_partial)
    if not checks.check_images:
        return splits
    return images.check_images(splits, skip_corrupt=checks.skip_corrupt,
                               allow_partial=checks.allow_partial, cache_dir=checks.cache_dir,
                               report_path=checks.report_path, name=dataset)


def class_id_split(key, dataset, root, labels, paths, train_ids, test_ids, expected, checks):
    """The class-disjoint splits of CUB and Cars196, fixed by class id (never by what is there).

    Args:
      key: registry name of the result ("cub"); dataset: display name; root: its folder.
      labels: int64 ``[N]`` original class ids; paths: ``N`` absolute image paths.
      train_ids, test_ids: the official class ids of each split (CUB: 1-100 / 101-200).
      expected: {"train": SplitSize, "test": SplitSize} checked by :func:`check_sizes`.
      checks: Checks.
    Returns:
      ``DatasetSplits(key, train, test)``.
    Raises:
      ValueError: a class id belongs to neither split.
    """
    labels = np.asarray(labels, dtype=np.int64)
    in_train, in_test = np.isin(labels, list(train_ids)), np.isin(labels, list(test_ids))
    stray = np.unique(labels[~(in_train | in_test)])
    if stray.size:
        raise ValueError(
            f"{dataset} at {root}: class ids {_listed(stray)} are not {dataset} classes "
            f"({min(train_ids)}-{max(test_ids)})")
    present = present_files(paths, dataset, checks)
    train_at, test_at = np.flatnonzero(in_train & present), np.flatnonzero(in_test & present)
    splits = DatasetSplits(
        name=key,
        train=Records(labels[train_at], paths=tuple(paths[i] for i in train_at)),
        test=Records(labels[test_at], paths=tuple(paths[i] for i in test_at)))
    return finish(splits, dataset, root, expected, checks)
