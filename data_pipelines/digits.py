"""The embedded default data set: scikit-learn's bundled 8x8 handwritten digits (no download).

1,797 images of the digits 0-9 (SPEC §7). Classes 0-4 train, 5-9 test. The 8x8 intensities
0..16 are scaled to 0..255, upsampled bilinearly to `image_size` and repeated to 3 channels.
"""
import numpy as np
from absl import logging

from data_pipelines.records import DatasetSplits, Records

TRAIN_CLASSES = (0, 1, 2, 3, 4)


def digit_images(image_size=32):
    """(images uint8 [1797, image_size, image_size, 3], labels int64 [1797]) of sklearn digits."""
    import sklearn.datasets
    import tensorflow as tf

    if int(image_size) != image_size or image_size < 8:
        raise ValueError(f"digits: image_size must be an integer >= 8, got {image_size!r}")
    bunch = sklearn.datasets.load_digits()
    pixels = bunch.images.astype(np.float32) * (255.0 / 16.0)  # [N, 8, 8], 0..255
    resized = tf.image.resize(pixels[..., None], [int(image_size), int(image_size)],
                              method="bilinear").numpy()
    gray = np.clip(np.round(resized), 0, 255).astype(np.uint8)
    return np.repeat(gray, 3, axis=-1), bunch.target.astype(np.int64)


def load(data_dir=None, image_size=32):
    """The digits splits; `data_dir` is not used (the data ships with scikit-learn).

    Returns:
      DatasetSplits(name="digits", train=classes 0-4, test=classes 5-9), in-memory records with
      images uint8 [N, image_size, image_size, 3] and labels = the digit (int64).
    """
    if data_dir:
        logging.info("digits: data_dir=%s ignored (scikit-learn bundles the data)", data_dir)
    images, labels = digit_images(image_size)
    is_train = np.isin(labels, TRAIN_CLASSES)
    return DatasetSplits(
        name="digits",
        train=Records(labels[is_train], images=images[is_train]),
        test=Records(labels[~is_train], images=images[~is_train]),
    )
