"""DeepFashion In-shop Clothes Retrieval (Liu et al. 2016) loader: train / query / gallery.

Layout::

  <root>/Eval/list_eval_partition.txt   line 1: number of images; line 2: header
                                        "image_name item_id evaluation_status"; then rows
                                        like "img/WOMEN/Dresses/id_00000002/02_1_front.jpg
                                        id_00000002 train" (one line each)
  <root>/img/...                        (or <root>/Img/img/... as the archive unpacks)

Train: 3,997 items / 25,882 images; evaluation: 3,985 items, 14,218 query images searched in
12,612 gallery images. Labels are the item numbers (id_00000002 -> 2). `test` holds query and
gallery concatenated; evaluation is query vs gallery.
"""
import os
import re

import numpy as np
from absl import logging

from data_pipelines import _layout
from data_pipelines.records import DatasetSplits, Records, concatenate

NAME = "In-shop Clothes Retrieval"
SUBFOLDERS = ("In-shop Clothes Retrieval Benchmark", "In-shop", "InShop", "inshop", "Inshop",
              "in_shop", "deepfashion_inshop")
PARTITION = os.path.join("Eval", "list_eval_partition.txt")
LAYOUT = (
    "the In-shop folder (given directly or as its parent) holding Eval/list_eval_partition.txt "
    "(line 1: count, line 2: header, then 'path item_id status' with status "
    "train/query/gallery) and the listed images under img/ (or Img/img/)"
)
EXPECTED = {"train": _layout.SplitSize(25882, classes=3997),
            "test": _layout.SplitSize(14218 + 12612, classes=3985),
            "query": _layout.SplitSize(14218), "gallery": _layout.SplitSize(12612)}
STATUSES = ("train", "query", "gallery")


def item_number(item_id, path):
    """Integer label of an item id such as "id_00000002" (-> 2)."""
    match = re.search(r"(\d+)$", item_id)
    if match is None:
        raise ValueError(f"{NAME}: {path}: cannot read an item number from item id {item_id!r}")
    return int(match.group(1))


def image_base(root):
    """Folder the partition file's "img/..." paths are relative to."""
    if not os.path.isdir(os.path.join(root, "img")) and os.path.isdir(
        os.path.join(root, "Img", "img")
    ):
        return os.path.join(root, "Img")
    return root


def load(data_dir=None, expected=None, **checks):
    """Reads In-shop from `data_dir` (the folder holding Eval/, or its parent).

    The split is the one of the partition file.

    Args:
      data_dir: folder path (str).
      expected: {"train", "test", "query", "gallery": _layout.SplitSize} ("test": query and
        gallery together, classes = items); None for the published EXPECTED.
      **checks: fields of _layout.Checks (allow_partial, skip_corrupt, check_files,
        check_images, cache_dir, report_path).
    Returns:
      DatasetSplits(name="inshop", train, test=query+gallery, query, gallery).
    Raises:
      FileNotFoundError: the partition file or a listed image is missing.
      ValueError: a malformed partition line or an unknown status.
      _layout.IncompleteDatasetError: not the published size (unless allow_partial).
      images.CorruptImageError: images that do not decode (unless skip_corrupt).
    """
    checks = _layout.Checks(**checks)
    root = _layout.resolve_root(data_dir, PARTITION, SUBFOLDERS, NAME, LAYOUT)
    partition = _layout.require_file(root, PARTITION, NAME, LAYOUT)
    with open(partition, encoding="utf-8") as handle:
        first = handle.readline().strip()
    declared = _layout.parse_int(first, partition, "image count on line 1")
    numbered = _layout.read_numbered_rows(partition, 3, skip_lines=2, dataset=NAME)
    rows = [fields for _, fields in numbered]
    # An image listed twice (e.g. as train and as query) would leak between the splits.
    _layout.check_unique([rel for rel, _, _ in rows],
                         [f"{partition} line {line}" for line, _ in numbered], "image", NAME,
                         [f"{item} {status}" for _, item, status in rows], "item and status")
    if declared != len(rows):
        logging.warning("%s: %s line 1 declares %d images but lists %d",
                        NAME, partition, declared, len(rows))
    base = image_base(root)
    for line, (rel, _, status) in numbered:
        if status not in STATUSES:
            raise ValueError(
                f"{NAME}: {partition} line {line}: unknown evaluation status {status!r} for {rel} "
                f"(expected one of {', '.join(STATUSES)})"
            )
    paths = [os.path.join(base, rel) for rel, _, _ in rows]
    present = _layout.present_files(paths, NAME, checks)
    groups = {status: ([], []) for status in STATUSES}
    for (_, item_id, status), path, here in zip(rows, paths, present):
        if here:
            groups[status][0].append(path)
            groups[status][1].append(item_number(item_id, partition))
    train, query, gallery = (
        Records(np.array(groups[s][1], dtype=np.int64), paths=tuple(groups[s][0]))
        for s in STATUSES
    )
    test = concatenate(query, gallery)
    shared = np.intersect1d(train.classes, test.classes)
    if shared.size:
        raise ValueError(
            f"{NAME}: {partition}: {shared.size} items appear in train and in query/gallery "
            f"(e.g. {shared[:5].tolist()}); the splits must be item-disjoint"
        )
    splits = DatasetSplits(name="inshop", train=train, test=test, query=query, gallery=gallery)
    return _layout.finish(splits, NAME, root, expected or EXPECTED, checks)
