"""Stanford Online Products (Oh Song et al. 2016) loader: 22,634 products, given split files.

Layout::

  Stanford_Online_Products/Ebay_train.txt   header "image_id class_id super_class_id path",
  Stanford_Online_Products/Ebay_test.txt    then one image per line
  Stanford_Online_Products/<super_class>_final/<image>.JPG

Train: 11,318 classes / 59,551 images; test: 11,316 classes / 60,502 images. Labels are the
original class ids.
"""
import os

import numpy as np

from data_pipelines import _layout
from data_pipelines.records import DatasetSplits, Records

NAME = "Stanford Online Products"
SUBFOLDERS = ("Stanford_Online_Products",)
LAYOUT = (
    "a folder Stanford_Online_Products (given directly or as its parent) holding Ebay_train.txt "
    "and Ebay_test.txt (header 'image_id class_id super_class_id path', then one image per "
    "line) and the image folders they list"
)
EXPECTED = {"train": _layout.SplitSize(59551, classes=11318),
            "test": _layout.SplitSize(60502, classes=11316)}


def read_split(root, filename, places=None):
    """(absolute paths: list of str [N], class ids: int64 [N]) of one Ebay_*.txt file.

    ``places``: a list that receives each row's "file line N" (for messages), or None.
    """
    path = _layout.require_file(root, filename, NAME, LAYOUT)
    with open(path, encoding="utf-8") as handle:
        header = handle.readline().split()
    if header[:2] != ["image_id", "class_id"]:
        raise ValueError(
            f"{NAME}: {path} line 1 should be the header 'image_id class_id super_class_id path', "
            f"got {' '.join(header)!r}"
        )
    numbered = _layout.read_numbered_rows(path, 4, skip_lines=1, dataset=NAME)
    where = [f"{path} line {line}" for line, _ in numbered]
    rows = [fields for _, fields in numbered]
    labels = np.array([_layout.parse_int(r[1], w, "class_id") for r, w in zip(rows, where)],
                      dtype=np.int64)
    ids = [_layout.parse_int(r[0], w, "image_id") for r, w in zip(rows, where)]
    _layout.check_unique(ids, where, "image_id", NAME, labels.tolist(), "class_id")
    paths = [os.path.join(root, r[3]) for r in rows]
    _layout.check_unique([r[3] for r in rows], where, "image", NAME, labels.tolist(),
                         "class_id")
    if places is not None:
        places.extend(where)
    return paths, labels


def load(data_dir=None, expected=None, **checks):
    """Reads SOP from `data_dir` (the Stanford_Online_Products folder or its parent).

    The split is the one of the two files, whatever the class ids.

    Args:
      data_dir: folder path (str).
      expected: {"train", "test": _layout.SplitSize}; None for the published EXPECTED.
      **checks: fields of _layout.Checks (allow_partial, skip_corrupt, check_files,
        check_images, cache_dir, report_path).
    Returns:
      DatasetSplits(name="sop", train, test) with file records and original class ids.
    Raises:
      FileNotFoundError: a split file or listed image is missing.
      ValueError: a split file is malformed, or train and test share classes.
      _layout.IncompleteDatasetError: not the published size (unless allow_partial).
      images.CorruptImageError: images that do not decode (unless skip_corrupt).
    """
    checks = _layout.Checks(**checks)
    root = _layout.resolve_root(data_dir, "Ebay_train.txt", SUBFOLDERS, NAME, LAYOUT)
    places = []
    train_paths, train_labels = read_split(root, "Ebay_train.txt", places)
    test_paths, test_labels = read_split(root, "Ebay_test.txt", places)
    # An image in both files would be a training image among the test queries.
    _layout.check_unique([os.path.relpath(p, root) for p in train_paths + test_paths], places,
                         "image", NAME)
    shared = np.intersect1d(train_labels, test_labels)
    if shared.size:
        raise ValueError(
            f"{NAME}: Ebay_train.txt and Ebay_test.txt share {shared.size} class ids "
            f"(e.g. {shared[:5].tolist()}); the splits must be class-disjoint"
        )
    present = _layout.present_files(train_paths + test_paths, NAME, checks)
    train_here, test_here = present[:len(train_paths)], present[len(train_paths):]
    train = Records(train_labels[train_here],
                    paths=tuple(p for p, here in zip(train_paths, train_here) if here))
    test = Records(test_labels[test_here],
                   paths=tuple(p for p, here in zip(test_paths, test_here) if here))
    splits = DatasetSplits(name="sop", train=train, test=test)
    return _layout.finish(splits, NAME, root, expected or EXPECTED, checks)
