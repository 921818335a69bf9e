"""CUB's noisy-label and closed-set variants, and bounding-box crops of CUB and Cars196."""
import numpy as np
import pytest
import tensorflow as tf

import data_pipelines
from data_pipelines import cub
from data_pipelines._layout import SplitSize

CUB_SIZES = {"train": SplitSize(6, class_ids=(99, 100)), "test": SplitSize(6, class_ids=(101, 102))}
CARS_SIZES = {"train": SplitSize(6, class_ids=(97, 98)), "test": SplitSize(6, class_ids=(99, 100))}


def _reference_noise(labels, rate, seed, num_classes=100):
    """The documented draws, one image at a time."""
    rng = np.random.default_rng(seed)
    u = rng.random(len(labels))
    drawn = rng.integers(1, num_classes + 1, len(labels))
    out = []
    for label, ui, di in zip(labels, u, drawn):
        out.append(int(di) if ui < rate else int(label))
    return np.array(out)


def test_noisy_labels_rate_and_draws():
    labels = np.repeat(np.arange(1, 101), 200)
    for rate in cub.NOISE_RATES.values():
        noisy = cub.noisy_labels(labels, rate, seed=3)
        np.testing.assert_array_equal(noisy, _reference_noise(labels, rate, 3))
        changed = np.mean(noisy != labels)
        # a swap to the same class is no change: expected rate * (1 - 1/100)
        assert abs(changed - rate * 0.99) < 0.01
        assert noisy.min() >= 1 and noisy.max() <= 100
    np.testing.assert_array_equal(cub.noisy_labels(labels, 0.2, 5),
                                  cub.noisy_labels(labels, 0.2, 5))
    assert np.any(cub.noisy_labels(labels, 0.2, 5) != cub.noisy_labels(labels, 0.2, 6))


def test_noisy_variant_changes_train_labels_only(cub_dir):
    clean = data_pipelines.load("cub", str(cub_dir), expected=CUB_SIZES)
    rates = {"low_noise": 0.1, "medium_noise": 0.2, "high_noise": 0.4}  # the reference's
    assert cub.NOISE_RATES == rates
    for variant in rates:
        noisy = data_pipelines.load("cub", str(cub_dir), expected=CUB_SIZES, variant=variant,
                                    noise_seed=11)
        assert noisy.train.paths == clean.train.paths
        np.testing.assert_array_equal(noisy.test.labels, clean.test.labels)
        np.testing.assert_array_equal(
            noisy.train.labels, _reference_noise(clean.train.labels, rates[variant], 11))
    high = [data_pipelines.load("cub", str(cub_dir), expected=CUB_SIZES, variant="high_noise",
                                noise_seed=s).train.labels for s in range(8)]
    assert any(np.any(h != clean.train.labels) for h in high)
    with pytest.raises(ValueError, match="unknown variant 'noisy'"):
        data_pipelines.load("cub", str(cub_dir), expected=CUB_SIZES, variant="noisy")


def test_closed_set_parts_hand_worked():
    # class 1: 10 images -> round(6.5)=6 train, round(2.0)=2 test, 2 validation;
    # class 2: 20 -> 13, 4, 3; class 3: 3 -> round(1.95)=2, round(0.6)=1, 0 (Python's round)
    labels = np.array([1] * 10 + [2] * 20 + [3] * 3)
    train, validation, test = cub.closed_set_parts(labels)
    np.testing.assert_array_equal(train, list(range(0, 6)) + list(range(10, 23)) + [30, 31])
    np.testing.assert_array_equal(validation, [6, 7, 23, 24, 25])
    np.testing.assert_array_equal(test, [8, 9, 26, 27, 28, 29, 32])


def test_closed_variant_covers_all_classes(cub_dir):
    splits = data_pipelines.load("cub", str(cub_dir), variant="closed",
                                 expected={"train": SplitSize(12, class_ids=(99, 100, 101, 102))})
    # 3 images per class: the first 2 train, the last 1 test, no validation image
    assert splits.train.labels.tolist() == [99, 99, 100, 100, 101, 101, 102, 102]
    assert splits.test.labels.tolist() == [99, 100, 101, 102]
    assert len(splits.validation) == 0
    assert all(p.endswith("_2.jpg") for p in splits.test.paths)
    with pytest.raises(data_pipelines.IncompleteDatasetError, match="11,788"):
        data_pipelines.load("cub", str(cub_dir), variant="closed")


def _decoded(path):
    return tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False).numpy()


def test_cub_crop_to_bbox(cub_dir, tmp_path):
    clean = data_pipelines.load("cub", str(cub_dir), expected=CUB_SIZES)
    cropped = data_pipelines.load("cub", str(cub_dir), expected=CUB_SIZES, crop_to_bbox=True,
                                  crop_dir=str(tmp_path / "crops"))
    np.testing.assert_array_equal(cropped.train.labels, clean.train.labels)
    for source, crop in zip(clean.train.paths + clean.test.paths,
                            cropped.train.paths + cropped.test.paths):
        k = int(source[-5])  # Bird_<cls>_<k>.jpg; box x = 2.6 + k, y = 3.4, w = 30 + k, h = 40
        # x: round(2.6 + k); x + w = 32.6 + 2k; y + h = 43.4 is past the 30-pixel height
        xmin, xmax = round(2.6 + k), round(32.6 + 2 * k)
        np.testing.assert_array_equal(_decoded(crop), _decoded(source)[3:30, xmin:xmax])
    again = data_pipelines.load("cub", str(cub_dir), expected=CUB_SIZES, crop_to_bbox=True,
                                crop_dir=str(tmp_path / "crops"))
    assert again.train.paths == cropped.train.paths


def test_cars_crop_to_bbox_and_tfds_refuses(cars_dir, tmp_path):
    clean = data_pipelines.load("cars196", str(cars_dir), expected=CARS_SIZES)
    cropped = data_pipelines.load("cars196", str(cars_dir), expected=CARS_SIZES,
                                  crop_to_bbox=True, crop_dir=str(tmp_path))
    for source, crop in zip(clean.test.paths, cropped.test.paths):
        # the fixture's box: x1=1, y1=2, x2=30, y2=20
        np.testing.assert_array_equal(_decoded(crop), _decoded(source)[2:20, 1:30])
    with pytest.raises(ValueError, match="need data_source='files'"):
        data_pipelines.load("cars196", str(tmp_path), data_source="tfds", crop_to_bbox=True)
