"""Loaders read the real layouts, split by class, and fail clearly on missing files."""
import logging
import os
import shutil

import numpy as np
import pytest

import data_pipelines
from data_pipelines import records as records_lib


def _files_exist(records):
    return all(os.path.isabs(p) and os.path.isfile(p) for p in records.paths)


def test_cub_splits_by_class_and_accepts_parent(cub_dir):
    splits = data_pipelines.load("cub", str(cub_dir))
    assert splits.name == "cub"
    np.testing.assert_array_equal(splits.train.labels, [99] * 3 + [100] * 3)
    np.testing.assert_array_equal(splits.test.labels, [101] * 3 + [102] * 3)
    assert splits.train.labels.dtype == np.int64
    assert _files_exist(splits.train) and _files_exist(splits.test)
    assert splits.train.paths[0].endswith("images/099.Bird_99/Bird_99_0.jpg")
    assert splits.query is None and splits.gallery is None
    same = data_pipelines.load("cub", str(cub_dir / "CUB_200_2011"))
    assert same.train.paths == splits.train.paths


def test_cub_warns_about_unpublished_counts(cub_dir, caplog):
    with caplog.at_level(logging.WARNING):
        data_pipelines.load("cub", str(cub_dir))
    text = caplog.text
    assert "expected 5,864, found 6" in text and "expected 100, found 2" in text


def test_cars_split_by_class_not_test_flag(cars_dir):
    splits = data_pipelines.load("cars196", str(cars_dir))
    np.testing.assert_array_equal(splits.train.labels, [97] * 3 + [98] * 3)
    np.testing.assert_array_equal(splits.test.labels, [99] * 3 + [100] * 3)
    assert splits.train.paths[0] == os.path.join(str(cars_dir), "car_ims", "000001.jpg")
    assert _files_exist(splits.test)


def test_sop_reads_header_and_paths(sop_dir):
    splits = data_pipelines.load("sop", str(sop_dir.parent))  # parent folder accepted
    np.testing.assert_array_equal(splits.train.labels, [1, 1, 1, 2, 2, 3, 3, 3])
    np.testing.assert_array_equal(splits.test.labels, [4, 4, 5, 5, 5])
    assert splits.train.paths[0] == os.path.join(str(sop_dir), "bicycle_final", "1_0.JPG")


def test_inshop_query_gallery_and_item_ids(inshop_dir):
    splits = data_pipelines.load("inshop", str(inshop_dir))
    np.testing.assert_array_equal(splits.train.labels, [1, 1, 2, 2])
    np.testing.assert_array_equal(splits.query.labels, [3, 4])
    np.testing.assert_array_equal(splits.gallery.labels, [3, 4, 4])
    np.testing.assert_array_equal(splits.test.labels, [3, 4, 3, 4, 4])
    assert splits.test.paths == splits.query.paths + splits.gallery.paths
    assert splits.query.paths[0].endswith("img/WOMEN/Dresses/id_00000003/04_1_front.jpg")


def test_missing_annotation_file_is_named(cub_dir, tmp_path):
    copy = tmp_path / "CUB_200_2011"
    shutil.copytree(cub_dir / "CUB_200_2011", copy)
    os.remove(copy / "image_class_labels.txt")
    with pytest.raises(FileNotFoundError, match="image_class_labels.txt"):
        data_pipelines.load("cub", str(copy))
    with pytest.raises(FileNotFoundError, match=r"Ebay_train.txt.*expected a folder"):
        data_pipelines.load("sop", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="cars_annos.mat"):
        data_pipelines.load("cars196", str(tmp_path / "nowhere"))


def test_missing_images_are_listed_with_count(sop_dir, tmp_path):
    copy = tmp_path / "Stanford_Online_Products"
    shutil.copytree(sop_dir, copy)
    os.remove(copy / "bicycle_final" / "1_0.JPG")
    os.remove(copy / "bicycle_final" / "5_1.JPG")
    with pytest.raises(FileNotFoundError) as error:
        data_pipelines.load("sop", str(copy))
    message = str(error.value)
    assert "2 of 13 image files" in message and "1_0.JPG" in message and "5_1.JPG" in message


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(ValueError, match=r"'mnist'.*cars196.*cub.*digits.*inshop.*sop"):
        data_pipelines.load("mnist")


def test_digits_classes_and_images():
    splits = data_pipelines.load("digits", None, image_size=16)
    assert splits.train.images.shape == (len(splits.train), 16, 16, 3)
    assert splits.train.images.dtype == np.uint8 and splits.train.paths is None
    assert set(splits.train.classes) == {0, 1, 2, 3, 4}
    assert set(splits.test.classes) == {5, 6, 7, 8, 9}
    assert len(splits.train) + len(splits.test) == 1797
    np.testing.assert_array_equal(splits.train.images[..., 0], splits.train.images[..., 2])
    assert splits.train.images.max() == 255 and splits.train.images.min() == 0


def test_records_helpers():
    records = records_lib.Records(labels=np.array([7, 3, 7, 9]), paths=("a", "b", "c", "d"))
    np.testing.assert_array_equal(records.classes, [3, 7, 9])
    assert records.num_classes == 3 and len(records) == 4
    np.testing.assert_array_equal(records.class_indices(), [1, 0, 1, 2])
    assert records.class_indices().dtype == np.int32
    subset = records.subset_classes([7, 9])
    assert subset.paths == ("a", "c", "d")
    with pytest.raises(ValueError, match="exactly one of"):
        records_lib.Records(labels=np.array([1]))
    with pytest.raises(ValueError, match="not in"):
        records.subset_classes([4])
