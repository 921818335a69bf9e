"""Helpers shared by the data set loaders: finding the root folder, reading annotation files,
checking that every listed image exists and that the published counts match (SPEC §7)."""
import os

import numpy as np
from absl import logging


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


def read_rows(path, num_fields, skip_lines=0, dataset=""):
    """Whitespace-separated rows of a text file as lists of `num_fields` strings.

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
            rows.append(fields)
    return rows


def parse_int(text, path, what):
    """int(text); ValueError naming the file and the field when it is not an integer."""
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{path}: expected an integer {what}, got {text!r}") from None


def check_images_exist(paths, dataset, shown=5):
    """Stats every path; FileNotFoundError listing the first `shown` missing ones and the count."""
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        listing = "\n  ".join(missing[:shown])
        raise FileNotFoundError(
            f"{dataset}: {len(missing)} of {len(paths)} image files listed in the annotations "
            f"are missing, e.g.\n  {listing}"
        )


def check_counts(dataset, root, expected, found):
    """Logs one warning when counts differ from the published ones (SPEC §7).

    Args:
      expected, found: dicts name -> int with the same keys (e.g. "train images").
    Returns:
      True when every count matches.
    """
    mismatches = [k for k in expected if expected[k] != found[k]]
    if mismatches:
        details = "; ".join(
            f"{k}: expected {expected[k]:,}, found {found[k]:,}" for k in mismatches
        )
        logging.warning(
            "%s at %s does not have the published size (%s); continuing with what is there",
            dataset, root, details,
        )
    return not mismatches


def first_half_classes(class_ids):
    """The first half (by sorted id) of the classes; for 200 CUB classes, ids 1..100."""
    return sorted(class_ids)[: len(class_ids) // 2]


def split_by_classes(labels, paths, train_classes):
    """(train labels, train paths, test labels, test paths) of records split by class."""
    is_train = np.isin(labels, train_classes)
    train_paths = tuple(p for p, t in zip(paths, is_train) if t)
    test_paths = tuple(p for p, t in zip(paths, is_train) if not t)
    return labels[is_train], train_paths, labels[~is_train], test_paths


def half_class_split(key, name, root, labels, paths, expected, check_files):
    """The class-disjoint splits of CUB and Cars196: train on the first half of the classes.

    Args:
      key: registry name of the result ("cub"); name: display name for messages; root: folder.
      labels: int64 ``[N]`` original class ids; paths: ``N`` absolute image paths.
      expected: the published counts (SPEC §7) checked by :func:`check_counts`.
      check_files: stat every image first.
    Returns:
      ``DatasetSplits(name, train, test)``.
    """
    from data_pipelines.records import DatasetSplits, Records

    if check_files:
        check_images_exist(paths, name)
    train_classes = first_half_classes(np.unique(labels).tolist())
    train_labels, train_paths, test_labels, test_paths = split_by_classes(labels, paths, train_classes)
    train = Records(train_labels, paths=train_paths)
    test = Records(test_labels, paths=test_paths)
    check_counts(name, root, expected,
                 {"train classes": train.num_classes, "train images": len(train),
                  "test classes": test.num_classes, "test images": len(test)})
    return DatasetSplits(name=key, train=train, test=test)
