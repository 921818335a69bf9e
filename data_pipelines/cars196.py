"""Cars196 (Stanford Cars, Krause et al. 2013) loader: 196 car models, class-disjoint halves.

Layout (the "cars_annos.mat + car_ims" release)::

  <root>/cars_annos.mat   MATLAB struct array `annotations` with fields relative_im_path
                          ("car_ims/000001.jpg"), bbox_x1, bbox_y1, bbox_x2, bbox_y2,
                          class (1..196) and test (0/1)
  <root>/car_ims/000001.jpg ...

The DML split is by CLASS, not by the `test` flag, and fixed by class id: train = classes 1-98
(8,054 images), test = classes 99-196 (8,131 images). Labels are the original ids.
``crop_to_bbox=True`` crops every image to its bbox_x1..bbox_y2 box (data_pipelines.boxes).
"""
import os

import numpy as np
import scipy.io

from data_pipelines import _layout
from data_pipelines import boxes as boxes_lib
from data_pipelines.records import DatasetSplits

NAME = "Cars196"
SUBFOLDERS = ("cars196", "CARS196", "Cars196", "cars", "stanford_cars")
LAYOUT = (
    "a folder (given directly or as the parent of cars196/CARS196/stanford_cars) holding "
    "cars_annos.mat (struct array 'annotations' with fields relative_im_path, class, test, "
    "bbox_*) and the images car_ims/000001.jpg ..."
)
TRAIN_CLASSES = tuple(range(1, 99))
TEST_CLASSES = tuple(range(99, 197))
EXPECTED = {"train": _layout.SplitSize(8054, class_ids=TRAIN_CLASSES),
            "test": _layout.SplitSize(8131, class_ids=TEST_CLASSES)}
REQUIRED_FIELDS = ("relative_im_path", "class")
BOX_FIELDS = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2")


def read_boxes(mat_path):
    """int64 [N, 4] boxes (x1, y1, x2, y2) of cars_annos.mat, in its annotation order."""
    annotations = np.atleast_1d(scipy.io.loadmat(mat_path, squeeze_me=True)["annotations"])
    absent = [f for f in BOX_FIELDS if f not in (annotations.dtype.names or ())]
    if absent:
        raise ValueError(f"{NAME}: crop_to_bbox needs the fields {list(BOX_FIELDS)} in "
                         f"{mat_path} 'annotations'; missing {absent}")
    return np.array([[int(np.squeeze(a[f])) for f in BOX_FIELDS] for a in annotations],
                    dtype=np.int64).reshape(-1, 4)


def read_annotations(mat_path):
    """(relative paths: list of str [N], class ids: int64 [N]) from a cars_annos.mat file."""
    try:
        mat = scipy.io.loadmat(mat_path, squeeze_me=True)
    except Exception as error:  # scipy raises several types for a damaged file
        raise ValueError(f"{NAME}: cannot read {mat_path} as a MATLAB file: {error}") from error
    if "annotations" not in mat:
        raise ValueError(
            f"{NAME}: {mat_path} has no 'annotations' variable "
            f"(found: {sorted(k for k in mat if not k.startswith('__'))}); expected {LAYOUT}"
        )
    annotations = np.atleast_1d(mat["annotations"])
    fields = annotations.dtype.names or ()
    absent = [f for f in REQUIRED_FIELDS if f not in fields]
    if absent:
        raise ValueError(
            f"{NAME}: {mat_path} 'annotations' lacks field(s) {absent} (has {list(fields)})"
        )
    rel_paths = [str(np.squeeze(p)) for p in annotations["relative_im_path"]]
    labels = np.array([int(np.squeeze(c)) for c in annotations["class"]], dtype=np.int64)
    # An image listed twice would land in both splits, or twice in one, with either label.
    _layout.check_unique(rel_paths, [f"{mat_path} annotations entry {i}"
                                     for i in range(1, len(rel_paths) + 1)],
                         "relative_im_path", NAME, labels.tolist(), "class")
    return rel_paths, labels


def load(data_dir=None, expected=None, crop_to_bbox=False, crop_dir=None, **checks):
    """Reads Cars196 from `data_dir` (the folder holding cars_annos.mat, or its parent).

    Args:
      data_dir: folder path (str).
      expected: {"train", "test": _layout.SplitSize}; None for the published EXPECTED.
      crop_to_bbox: crop every image to its annotation box (cached PNG copies).
      crop_dir: folder of the cropped copies (None: data_pipelines.boxes.default_crop_dir()).
      **checks: fields of _layout.Checks (allow_partial, skip_corrupt, check_files,
        check_images, cache_dir, report_path).
    Returns:
      DatasetSplits(name="cars196", train, test) with file records and original class ids.
    Raises:
      FileNotFoundError: cars_annos.mat or a listed image is missing.
      ValueError: the .mat file does not hold the expected struct array.
      _layout.IncompleteDatasetError: not the published size (unless allow_partial).
      images.CorruptImageError: images that do not decode (unless skip_corrupt).
    """
    checks = _layout.Checks(**checks)
    root = _layout.resolve_root(data_dir, "cars_annos.mat", SUBFOLDERS, NAME, LAYOUT)
    mat_path = _layout.require_file(root, "cars_annos.mat", NAME, LAYOUT)
    rel_paths, labels = read_annotations(mat_path)
    paths = [os.path.join(root, rel) for rel in rel_paths]
    splits = _layout.class_id_split("cars196", NAME, root, labels, paths, TRAIN_CLASSES,
                                    TEST_CLASSES, expected or EXPECTED, checks)
    if not crop_to_bbox:
        return splits
    box_of = dict(zip(paths, (tuple(b) for b in read_boxes(mat_path).tolist())))

    def crop(records):
        return boxes_lib.crop_records(records, lambda p, w, h: box_of[p], crop_dir, NAME)

    return DatasetSplits(splits.name, crop(splits.train), crop(splits.test))
