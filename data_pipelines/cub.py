"""CUB-200-2011 (Wah et al. 2011) loader: 200 bird species, class-disjoint halves (SPEC §7).

Layout (the archive's own)::

  CUB_200_2011/images.txt               "<image_id> <relative path>" per line
  CUB_200_2011/image_class_labels.txt   "<image_id> <class_id>" per line (class ids 1..200)
  CUB_200_2011/images/NNN.Name/*.jpg

The split is fixed by class id: train = classes 1-100 (5,864 images), test = classes 101-200
(5,924 images), whatever subset of them a copy holds. Labels are the original class ids.

The reference's other CUB data sets are `variant`s of :func:`load`:

* "low_noise", "medium_noise", "high_noise": the standard split whose TRAIN labels are swapped
  with probability 0.1 / 0.2 / 0.4 for a class drawn uniformly from the train classes 1-100
  (which may be the true one), per image, independently; test labels stay clean. The reference
  draws with the unseeded global numpy generator; here ``noise_seed`` seeds it (NOISE_RATES).
* "closed": a closed-set split of all 200 classes: per class, its images in images.txt order
  are cut into train = the first round(0.65 n), validation = the next n - train - test, and
  test = the last round(0.20 n) (Python's round, as the reference).

``crop_to_bbox=True`` crops every image to its box in ``bounding_boxes.txt`` (data_pipelines.boxes).
"""
import os

import numpy as np

from data_pipelines import _layout
from data_pipelines import boxes as boxes_lib
from data_pipelines.records import DatasetSplits, Records

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
EXPECTED_ALL = _layout.SplitSize(11788, class_ids=TRAIN_CLASSES + TEST_CLASSES)
NOISE_RATES = {"low_noise": 0.1, "medium_noise": 0.2, "high_noise": 0.4}
CLOSED = "closed"
VARIANTS = ("standard", CLOSED) + tuple(NOISE_RATES)
CLOSED_TRAIN_FRACTION = 0.65
CLOSED_TEST_FRACTION = 0.20


def noisy_labels(labels, rate, seed, num_classes=len(TRAIN_CLASSES)):
    """The reference's label noise: int64 [N] -> int64 [N].

    Each label is replaced, with probability `rate`, by a class drawn uniformly from
    1..`num_classes` (possibly the same class). Draws: ``u = rng.random(N)`` then
    ``r = rng.integers(1, num_classes + 1, N)`` with ``rng = np.random.default_rng(seed)``.
    """
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    swap = rng.random(labels.shape[0]) < rate
    drawn = rng.integers(1, num_classes + 1, labels.shape[0])
    return np.where(swap, drawn, labels).astype(np.int64)


def closed_set_parts(labels):
    """Per-class train / validation / test positions of the closed-set split.

    Args:
      labels: int64 [N] class ids in images.txt order.
    Returns:
      (train, validation, test): int64 index arrays into `labels`, each in list order.
    """
    labels = np.asarray(labels)
    parts = ([], [], [])
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        n = members.size
        n_train = round(CLOSED_TRAIN_FRACTION * n)
        n_test = round(CLOSED_TEST_FRACTION * n)
        n_val = n - (n_train + n_test)
        parts[0].append(members[:n_train])
        parts[1].append(members[n_train:n_train + n_val])
        parts[2].append(members[n_train + n_val:])
    return tuple(np.sort(np.concatenate(p)).astype(np.int64) if p else np.zeros(0, np.int64)
                 for p in parts)


def load(data_dir=None, expected=None, variant="standard", noise_seed=0, crop_to_bbox=False,
         crop_dir=None, **checks):
    """Reads CUB-200-2011 from `data_dir` (the CUB_200_2011 folder or its parent).

    Args:
      data_dir: folder path (str).
      expected: {"train", "test": _layout.SplitSize}; None for the published EXPECTED
        (variant "closed": {"train": SplitSize} of the whole set, default EXPECTED_ALL).
      variant: one of VARIANTS (module docstring): "standard", "closed", "low_noise",
        "medium_noise", "high_noise".
      noise_seed: seed of the label noise of the noisy variants.
      crop_to_bbox: crop every image to its bounding_boxes.txt box (cached PNG copies).
      crop_dir: folder of the cropped copies (None: data_pipelines.boxes.default_crop_dir()).
      **checks: fields of _layout.Checks (allow_partial, skip_corrupt, check_files,
        check_images, cache_dir, report_path).
    Returns:
      DatasetSplits(name="cub", train, test) with file records and original class ids (noisy
      train labels for the noisy variants; "closed" also sets `validation`).
    Raises:
      FileNotFoundError: an annotation file, the images/ folder or a listed image is missing.
      ValueError: malformed annotation lines or ids listed in one file but not the other.
      _layout.IncompleteDatasetError: not the published size (unless allow_partial).
      images.CorruptImageError: images that do not decode (unless skip_corrupt).
    """
    if variant not in VARIANTS:
        raise ValueError(f"{NAME}: unknown variant {variant!r}; expected one of {VARIANTS}")
    checks = _layout.Checks(**checks)
    root = _layout.resolve_root(data_dir, "images.txt", SUBFOLDERS, NAME, LAYOUT)
    images_txt = _layout.require_file(root, "images.txt", NAME, LAYOUT)
    labels_txt = _layout.require_file(root, "image_class_labels.txt", NAME, LAYOUT)
    image_dir = os.path.join(root, "images")
    if not os.path.isdir(image_dir):
        raise FileNotFoundError(f"{NAME}: missing image folder {image_dir}; expected {LAYOUT}")

    id_to_path = read_id_file(images_txt, "path", lambda text, where: text)
    id_to_class = read_id_file(
        labels_txt, "class", lambda text, where: _layout.parse_int(text, where, "class id"))
    _same_ids(images_txt, id_to_path, labels_txt, id_to_class)
    id_to_path = {i: value for i, (value, _) in id_to_path.items()}
    id_to_class = {i: value for i, (value, _) in id_to_class.items()}
    ids = sorted(id_to_path)
    labels = np.array([id_to_class[i] for i in ids], dtype=np.int64)
    paths = [os.path.join(image_dir, id_to_path[i]) for i in ids]
    if variant == CLOSED:
        splits = _closed_split(root, labels, paths, expected, checks)
    else:
        splits = _layout.class_id_split("cub", NAME, root, labels, paths, TRAIN_CLASSES,
                                        TEST_CLASSES, expected or EXPECTED, checks)
    if variant in NOISE_RATES:
        # drawn over every listed train-class image in list order, so an image's label does
        # not depend on which other files a partial copy holds
        in_train = np.isin(labels, TRAIN_CLASSES)
        noisy = noisy_labels(labels[in_train], NOISE_RATES[variant], noise_seed)
        label_of = dict(zip((p for p, t in zip(paths, in_train) if t), noisy.tolist()))
        train = splits.train
        splits = DatasetSplits(splits.name, Records(
            np.array([label_of[p] for p in train.paths], np.int64), paths=train.paths),
            splits.test)
    if crop_to_bbox:
        splits = _cropped(splits, root, ids, paths, crop_dir)
    return splits


def read_id_file(path, value_what, parse_value):
    """``{image id: (value, line number)}`` of an "<image_id> <value>" file (images.txt,
    image_class_labels.txt).

    Raises:
      ValueError: naming the file and line of a malformed row or of an image id listed twice
        (with the conflicting value when the two lines differ).
    """
    rows = _layout.read_numbered_rows(path, 2, dataset=NAME)
    places = [f"{path} line {line}" for line, _ in rows]
    ids = [_layout.parse_int(image_id, place, "image id")
           for (_, (image_id, _)), place in zip(rows, places)]
    values = [parse_value(text, place) for (_, (_, text)), place in zip(rows, places)]
    _layout.check_unique(ids, places, "image id", NAME, values, value_what)
    return {i: (value, line) for i, value, (line, _) in zip(ids, values, rows)}


def _same_ids(images_txt, id_to_path, labels_txt, id_to_class):
    """Every image id of image_class_labels.txt is in images.txt and the other way round."""
    for path, listed, other_path, other in ((labels_txt, id_to_class, images_txt, id_to_path),
                                            (images_txt, id_to_path, labels_txt, id_to_class)):
        stray = sorted(set(listed) - set(other), key=lambda i: listed[i][1])
        if stray:
            first = stray[0]
            more = f" ({len(stray)} such ids in all)" if len(stray) > 1 else ""
            raise ValueError(f"{NAME}: {path} line {listed[first][1]}: image id {first} is not "
                             f"in {other_path}{more}; both files must list the same image ids")


def _closed_split(root, labels, paths, expected, checks):
    """DatasetSplits(train, test, validation) of the closed set (all 200 classes each)."""
    present = _layout.present_files(paths, NAME, checks)
    kept = np.flatnonzero(present)
    everything = Records(labels[kept], paths=tuple(paths[i] for i in kept))
    checked = _layout.finish(DatasetSplits("cub", everything, everything.select([])), NAME,
                             root, expected or {"train": EXPECTED_ALL}, checks).train
    train, validation, test = (checked.select(part)
                               for part in closed_set_parts(checked.labels))
    return DatasetSplits("cub", train, test, validation=validation)


def _cropped(splits, root, ids, paths, crop_dir):
    """`splits` with every image cropped to its bounding_boxes.txt box."""
    boxes_txt = _layout.require_file(root, "bounding_boxes.txt", NAME, LAYOUT)
    box_by_id = boxes_lib.read_cub_boxes(boxes_txt, NAME)
    missing = sorted(set(ids) - set(box_by_id))
    if missing:
        raise ValueError(f"{NAME}: {boxes_txt} has no box for image ids {missing[:5]} "
                         f"({len(missing)} in all)")
    box_of = {p: box_by_id[i] for i, p in zip(ids, paths)}

    def crop(records):
        if records is None:
            return None
        return boxes_lib.crop_records(
            records, lambda p, w, h: boxes_lib.cub_pixel_box(box_of[p], w, h), crop_dir, NAME)

    return DatasetSplits(splits.name, crop(splits.train), crop(splits.test),
                         validation=crop(splits.validation))
