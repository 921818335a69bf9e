"""CUB-200-2011 (Wah et al. 2011) loader: 200 bird species, class-disjoint halves (SPEC §7).

Layout (the archive's own)::

  CUB_200_2011/images.txt               "<image_id> <relative path>" per line
  CUB_200_2011/image_class_labels.txt   "<image_id> <class_id>" per line (class ids 1..200)
  CUB_200_2011/images/NNN.Name/*.jpg

Train = the first half of the sorted class ids (1-100, 5,864 images), test = the rest
(101-200, 5,924 images). Labels are the original class ids.
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
EXPECTED = {"train classes": 100, "train images": 5864, "test classes": 100,
            "test images": 5924}


def load(data_dir=None, check_files=True):
    """Reads CUB-200-2011 from `data_dir` (the CUB_200_2011 folder or its parent).

    Args:
      data_dir: folder path (str).
      check_files: stat every listed image and fail on missing ones.
    Returns:
      DatasetSplits(name="cub", train, test) with file records and original class ids.
    Raises:
      FileNotFoundError: an annotation file, the images/ folder or a listed image is missing.
      ValueError: malformed annotation lines or ids listed in one file but not the other.
    """
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
    return _layout.half_class_split("cub", NAME, root, labels, paths, EXPECTED, check_files)
