"""Bounding boxes of CUB-200-2011 and Cars196, and cropping images to them.

Boxes are integer pixel rectangles ``(xmin, ymin, xmax, ymax)``: rows ``ymin:ymax`` and columns
``xmin:xmax`` are kept (the reference's ``tf.image.crop_to_bounding_box(ymin, xmin,
ymax - ymin, xmax - xmin)``).

* CUB ``bounding_boxes.txt``: ``<image_id> <x> <y> <width> <height>`` (floats, pixels); the
  reference keeps ``round(x), round(y), round(min(x + width, W)), round(min(y + height, H))``.
* Cars196 ``cars_annos.mat``: ``bbox_x1, bbox_y1, bbox_x2, bbox_y2`` used as they are (clipped
  to the image here; the reference would fail on a box past the border).

Cropped images are written once, losslessly (PNG, decoded by TensorFlow like the pipelines do),
to a cache folder keyed by source path, size, mtime and box; records then point at the crops,
so every pipeline (generator, in-graph, evaluation) sees them unchanged.
"""
import hashlib
import os

import numpy as np

from data_pipelines import _layout

CROP_SUBFOLDER = "crops"


def read_cub_boxes(path, dataset="CUB-200-2011"):
    """{image id: (x, y, width, height) floats} from CUB's bounding_boxes.txt."""
    boxes = {}
    for image_id, rest in _layout.read_rows(path, 2, dataset=dataset):
        fields = rest.split()
        try:
            values = tuple(float(v) for v in fields)
        except ValueError:
            values = ()
        if len(values) != 4:
            raise ValueError(f"{dataset}: {path}: expected '<id> <x> <y> <width> <height>', "
                             f"got {image_id} {rest!r}")
        boxes[_layout.parse_int(image_id, path, "image id")] = values
    return boxes


def cub_pixel_box(box, width, height):
    """CUB (x, y, w, h) floats and the image size -> integer (xmin, ymin, xmax, ymax)."""
    x, y, w, h = box
    return (int(round(x)), int(round(y)), int(round(min(x + w, float(width)))),
            int(round(min(y + h, float(height)))))


def default_crop_dir():
    """``$XDG_CACHE_HOME/ccp/crops``, or ``~/.cache/ccp/crops``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "ccp", CROP_SUBFOLDER)


def _crop_path(crop_dir, path, box):
    stat = os.stat(path)
    key = f"{os.path.abspath(path)}|{stat.st_size}|{stat.st_mtime_ns}|{box}"
    digest = hashlib.sha1(key.encode("utf-8")).hexdigest()[:16]
    stem = os.path.splitext(os.path.basename(path))[0]
    return os.path.join(crop_dir, f"{stem}-{digest}.png")


def crop_files(paths, box_of, crop_dir=None, dataset=""):
    """Writes each image cropped to its box (once, cached) and returns the crops' paths.

    Args:
      paths: N image file paths.
      box_of: ``box_of(index, width, height) -> (xmin, ymin, xmax, ymax)`` integer pixels.
      crop_dir: cache folder of the crops (None: :func:`default_crop_dir`).
      dataset: display name for messages.
    Returns:
      tuple of N PNG paths, ``crop[ymin:ymax, xmin:xmax]`` of the TensorFlow-decoded image
      (boxes clipped to the image).
    Raises:
      ValueError: a box that is empty once clipped to its image, naming the file.
    """
    import tensorflow as tf  # only when cropping: the loaders stay TF-free otherwise

    crop_dir = default_crop_dir() if crop_dir is None else os.fspath(crop_dir)
    os.makedirs(crop_dir, exist_ok=True)
    out = []
    for index, path in enumerate(paths):
        image = None
        contents = tf.io.read_file(path)
        shape = tf.io.extract_jpeg_shape(contents) if path.lower().endswith(
            (".jpg", ".jpeg")) else None
        if shape is None:
            image = tf.io.decode_image(contents, channels=3, expand_animations=False)
            shape = tf.shape(image)
        height, width = int(shape[0]), int(shape[1])
        xmin, ymin, xmax, ymax = box_of(index, width, height)
        xmin, ymin = max(0, int(xmin)), max(0, int(ymin))
        xmax, ymax = min(width, int(xmax)), min(height, int(ymax))
        if xmax <= xmin or ymax <= ymin:
            raise ValueError(f"{dataset}: the bounding box of {path} is empty inside its "
                             f"{width}x{height} image: {(xmin, ymin, xmax, ymax)}")
        target = _crop_path(crop_dir, path, (xmin, ymin, xmax, ymax))
        if not os.path.isfile(target):
            if image is None:
                image = tf.io.decode_image(contents, channels=3, expand_animations=False)
            cropped = image[ymin:ymax, xmin:xmax]
            partial = f"{target}.{os.getpid()}.tmp"
            tf.io.write_file(partial, tf.io.encode_png(cropped))
            os.replace(partial, target)
        out.append(target)
    return tuple(out)


def crop_records(records, box_of_path, crop_dir=None, dataset=""):
    """File Records -> the same records with paths to their cropped copies.

    Args:
      records: file-backed Records.
      box_of_path: ``box_of_path(path, width, height) -> (xmin, ymin, xmax, ymax)``.
    """
    from data_pipelines.records import Records

    paths = records.paths
    cropped = crop_files(paths, lambda i, w, h: box_of_path(paths[i], w, h), crop_dir, dataset)
    return Records(np.asarray(records.labels), paths=cropped)
