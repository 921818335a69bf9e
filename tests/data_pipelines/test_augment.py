"""SPEC §6 transforms: crop area / aspect bounds, eval center crop."""
import numpy as np
import pytest
import tensorflow as tf

from data_pipelines import augment


def _coordinate_image(height, width):
    """float32 [H, W, 3]: channel 0 = column x, channel 1 = row y, channel 2 = 0."""
    ys, xs = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    return np.stack([xs, ys, np.zeros_like(xs)], -1).astype(np.float32)


def test_train_crop_area_and_aspect_within_bounds():
    size, side = 32, 200
    image = tf.constant(_coordinate_image(side, side))
    areas = []
    for k in range(40):
        out = augment.train_transform(image, tf.constant([5, k], tf.int64), image_size=size,
                                      min_area=0.16, flip=False).numpy()
        assert out.shape == (size, size, 3) and out.dtype == np.float32
        # Bilinear sampling at half-pixel centres spans (1 - 1/size) of the crop window.
        width = (out[..., 0].max() - out[..., 0].min()) / (1 - 1 / size) + 1
        height = (out[..., 1].max() - out[..., 1].min()) / (1 - 1 / size) + 1
        area = width * height / side**2
        assert 0.16 - 0.03 <= area <= 1.0 + 1e-6
        assert 3 / 4 - 0.05 <= width / height <= 4 / 3 + 0.05
        areas.append(area)
    assert min(areas) < 0.5 and max(areas) > 0.6  # the range is actually explored


def test_train_transform_range_flip_and_determinism():
    rng = np.random.default_rng(0)
    image = tf.constant(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8))
    outs = [augment.train_transform(image, tf.constant([1, k], tf.int64), 32).numpy()
            for k in range(12)]
    for out in outs:
        assert out.min() >= 0.0 and out.max() <= 255.0
    again = augment.train_transform(image, tf.constant([1, 3], tf.int64), 32).numpy()
    np.testing.assert_array_equal(outs[3], again)
    assert not np.array_equal(outs[0], outs[1])
    # Full-area crops (min_area=1) differ only by the flip: both orientations must occur.
    coords = tf.constant(_coordinate_image(32, 32))
    flipped = [augment.train_transform(coords, tf.constant([2, k], tf.int64), 32,
                                       min_area=1.0).numpy()[0, 0, 0] > 16 for k in range(16)]
    assert any(flipped) and not all(flipped)


def test_eval_resizes_shorter_side_and_center_crops():
    image = tf.constant(_coordinate_image(40, 60))  # H=40, W=60
    out = augment.eval_transform(image, image_size=32, resize_size=36).numpy()
    assert out.shape == (32, 32, 3)
    # Resized to 36 x 54, center 32 x 32: symmetric around the image centre in both axes.
    assert abs(out[..., 0].mean() - 29.5) < 0.5 and abs(out[..., 1].mean() - 19.5) < 0.5
    # 32 of 54 resized columns span about 32/54 of the original width.
    assert abs((out[..., 0].max() - out[..., 0].min()) - 60 * 31 / 54) < 2
    assert augment.default_resize_size(227) == 256
    with pytest.raises(ValueError, match="resize_size"):
        augment.eval_transform(image, image_size=32, resize_size=20)
