"""CUB-200-2011 (Wah et al. 2011) loader: 200 bird species, class-disjoint halves (SPEC §7).

Layout (the archive's own)::

  CUB_200_2011/images.txt               "<image_id> <relative path>" per line
  CUB_200_2011/image_class_labels.txt   "<image_id> <class_id>" per line (class ids 1..200)
  CUB_200_2011/images/NNN.Name/*.jpg

The split is fixed by class id: train = classes 1-100 (5,864 images), test = classes 101-200
(5,924 images), whatever subset of them a copy holds. Labels are the original class ids.
"""
import os

import numpy as np

from data_pipelines import _layout

NAME = "CUB-200-2011"
SUBFOLDERS = ("CUB_200_2011",)
LAYOUT = (
    "a folder CUB_200_2011 (given directly or as its parent) holding images.txt "
    "('<id> <relpath>'), image_class_labels.txt ('<id> <class>') and images/NNN.Name/*.jpg"
)
TRAIN_CLASSES = tuple(range(1, 101))
TEST_CLASSES = tuple(range(101, 201))
EXPECTED = {"train": _layout.SplitSize(5864, class_ids=TRAIN_CLASSES),
            "test": _layout.SplitSize(5924, class_ids=TEST_CLASSES)}


def load(data_dir=None, expected=None, **checks):
    """Reads CUB-200-2011 from `data_dir` (the CUB_200_2011 folder or its parent).

    Args:
      data_dir: folder path (str).
      expected: {"train", "test": _layout.SplitSize}; None for the published EXPECTED.
      **checks: fields of _layout.Checks (allow_partial, skip_corrupt, check_files,
        check_images, cache_dir, report_path).
    Returns:
      DatasetSplits(name="cub", train, test) with file records and original class ids.
    Raises:
      FileNotFoundError: an annotation file, the images/ folder or a listed image is missing.
      ValueError: malformed annotation lines or ids listed in one file but not the other.
      _layout.IncompleteDatasetError: not the published size (unless allow_partial).
      images.CorruptImageError: images that do not decode (unless skip_corrupt).
    """
    checks = _layout.Checks(**checks)
    root = _layout.resolve_root(data_dir, "images.txt", SUBFOLDERS, NAME, LAYOUT)
    images_txt = _layout.require_file(root, "images.txt", NAME, LAYOUT)
    labels_txt = _layout.require_file(root, "image_class_labels.txt", NAME, LAYOUT)
    image_dir = os.path.join(root, "images")
    if not os.path.isdir(image_dir):
        raise FileNotFoundError(f"{NAME}: missing image folder {image_dir}; expected {LAYOUT}")

    id_to_path = {}
    for image_id, rel in _layout.read_rows(images_txt, 2, dataset=NAME):
        id_to_path[_layout.parse_int(image_id, images_txt, "image id")] = rel
    id_to_class = {}
    for image_id, cls in _layout.read_rows(labels_txt, 2, dataset=NAME):
        id_to_class[_layout.parse_int(image_id, labels_txt, "image id")] = _layout.parse_int(
            cls, labels_txt, "class id"
        )
    if set(id_to_path) != set(id_to_class):
        only = sorted(set(id_to_path) ^ set(id_to_class))
        raise ValueError(
            f"{NAME}: {len(only)} image ids are in only one of {images_txt} and {labels_txt}, "
            f"e.g. {only[:5]}"
        )
    ids = sorted(id_to_path)
    labels = np.array([id_to_class[i] for i in ids], dtype=np.int64)
    paths = [os.path.join(image_dir, id_to_path[i]) for i in ids]
    return _layout.class_id_split("cub", NAME, root, labels, paths, TRAIN_CLASSES, TEST_CLASSES,
                                  expected or EXPECTED, checks)
