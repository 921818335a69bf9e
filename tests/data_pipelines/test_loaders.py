"""Loaders read the real layouts, split by class id, check the published sizes and every image,
and fail clearly on missing files."""
import logging
import os
import shutil

import numpy as np
import pytest
import scipy.io

import data_pipelines
from data_pipelines import records as records_lib
from data_pipelines._layout import SplitSize

# The exact sizes of the conftest fixtures (the published ones are SPEC §7's).
CUB_SIZES = {"train": SplitSize(6, class_ids=(99, 100)), "test": SplitSize(6, class_ids=(101, 102))}
CARS_SIZES = {"train": SplitSize(6, class_ids=(97, 98)), "test": SplitSize(6, class_ids=(99, 100))}
SOP_SIZES = {"train": SplitSize(8, classes=3), "test": SplitSize(5, classes=2)}
INSHOP_SIZES = {"train": SplitSize(4, classes=2), "test": SplitSize(5, classes=2),
                "query": SplitSize(2), "gallery": SplitSize(3)}


def _files_exist(records):
    return all(os.path.isabs(p) and os.path.isfile(p) for p in records.paths)


def test_cub_splits_by_class_and_accepts_parent(cub_dir, caplog):
    with caplog.at_level(logging.WARNING):
        splits = data_pipelines.load("cub", str(cub_dir), expected=CUB_SIZES)
    assert caplog.text == ""  # the sizes match: nothing to warn about
    assert splits.name == "cub"
    np.testing.assert_array_equal(splits.train.labels, [99] * 3 + [100] * 3)
    np.testing.assert_array_equal(splits.test.labels, [101] * 3 + [102] * 3)
    assert splits.train.labels.dtype == np.int64
    assert _files_exist(splits.train) and _files_exist(splits.test)
    assert splits.train.paths[0].endswith("images/099.Bird_99/Bird_99_0.jpg")
    assert splits.query is None and splits.gallery is None
    same = data_pipelines.load("cub", str(cub_dir / "CUB_200_2011"), expected=CUB_SIZES)
    assert same.train.paths == splits.train.paths


def test_cub_unpublished_counts_fail_unless_allow_partial(cub_dir, caplog):
    with pytest.raises(data_pipelines.IncompleteDatasetError) as error:
        data_pipelines.load("cub", str(cub_dir))
    message = str(error.value)
    assert "train images: expected 5,864, found 6" in message
    assert "test images: expected 5,924, found 6" in message
    assert "train classes: expected 100, found 2 (missing class ids 1, 2, 3, 4, 5, " in message
    assert "(98 in all)" in message and "--allow_partial" in message
    with caplog.at_level(logging.WARNING):
        splits = data_pipelines.load("cub", str(cub_dir), allow_partial=True)
    text = caplog.text
    assert "expected 5,864, found 6" in text and "expected 100, found 2" in text
    np.testing.assert_array_equal(splits.train.classes, [99, 100])


def _cub_copy_without(cub_dir, tmp_path, classes):
    """A copy of the CUB fixture whose annotation files and images lack `classes`."""
    copy = tmp_path / "CUB_200_2011"
    shutil.copytree(cub_dir / "CUB_200_2011", copy)
    ids = {line.split()[0] for line in (copy / "image_class_labels.txt").read_text().splitlines()
           if int(line.split()[1]) in classes}
    for name in ("images.txt", "image_class_labels.txt"):
        lines = (copy / name).read_text().splitlines()
        (copy / name).write_text("".join(f"{x}\n" for x in lines if x.split()[0] not in ids))
    for cls in classes:
        shutil.rmtree(copy / "images" / f"{cls:03d}.Bird_{cls}")
    return copy


def test_missing_test_class_never_moves_a_training_class(cub_dir, tmp_path):
    copy = _cub_copy_without(cub_dir, tmp_path, classes=(102,))
    with pytest.raises(data_pipelines.IncompleteDatasetError) as error:
        data_pipelines.load("cub", str(copy), expected=CUB_SIZES)
    message = str(error.value)
    assert "test images: expected 6, found 3" in message
    assert "test classes: expected 2, found 1 (missing class ids 102)" in message
    assert "train" not in message.split("SPEC §7):")[1]  # the train side is complete
    splits = data_pipelines.load("cub", str(copy), expected=CUB_SIZES, allow_partial=True)
    np.testing.assert_array_equal(splits.train.labels, [99] * 3 + [100] * 3)
    np.testing.assert_array_equal(splits.test.labels, [101] * 3)
    # No test class at all: classes 99 and 100 still train, the test split is empty.
    only_train = _cub_copy_without(cub_dir, tmp_path / "more", classes=(101, 102))
    splits = data_pipelines.load("cub", str(only_train), allow_partial=True)
    np.testing.assert_array_equal(splits.train.labels, [99] * 3 + [100] * 3)
    assert len(splits.test) == 0


def test_corrupt_images_are_named_before_anything_uses_them(cub_dir, tmp_path, caplog, damage):
    copy = tmp_path / "CUB_200_2011"
    shutil.copytree(cub_dir / "CUB_200_2011", copy)
    header = str(copy / "images" / "100.Bird_100" / "Bird_100_1.jpg")
    middle = str(copy / "images" / "101.Bird_101" / "Bird_101_2.jpg")
    damage.header(header)
    damage.middle(middle)
    with pytest.raises(data_pipelines.images.CorruptImageError) as error:
        data_pipelines.load("cub", str(copy), expected=CUB_SIZES)
    message = str(error.value)
    assert "2 corrupt or unreadable image file(s)" in message
    assert header in message and middle in message and "--skip_corrupt" in message
    report = tmp_path / "bad.txt"
    with caplog.at_level(logging.WARNING):
        splits = data_pipelines.load("cub", str(copy), expected=CUB_SIZES, skip_corrupt=True,
                                     report_path=str(report))
    assert f"skipping 2 corrupt or unreadable image file(s) of 12; the full list is in {report}" \
        in caplog.text
    assert [line.split("\t")[0] for line in report.read_text().splitlines()] == [header, middle]
    assert header not in splits.train.paths and middle not in splits.test.paths
    assert (len(splits.train), len(splits.test)) == (5, 5)


def test_cars_split_by_class_not_test_flag(cars_dir):
    splits = data_pipelines.load("cars196", str(cars_dir), expected=CARS_SIZES)
    np.testing.assert_array_equal(splits.train.labels, [97] * 3 + [98] * 3)
    np.testing.assert_array_equal(splits.test.labels, [99] * 3 + [100] * 3)
    assert splits.train.paths[0] == os.path.join(str(cars_dir), "car_ims", "000001.jpg")
    assert _files_exist(splits.test)


def test_cars_class_ids_outside_1_to_196_are_refused(cars_dir, tmp_path):
    copy = tmp_path / "cars"
    shutil.copytree(cars_dir, copy)
    mat = scipy.io.loadmat(str(copy / "cars_annos.mat"))
    mat["annotations"][0, 0]["class"] = np.array([[197]], np.uint8)
    scipy.io.savemat(str(copy / "cars_annos.mat"), {"annotations": mat["annotations"]})
    with pytest.raises(ValueError, match=r"class ids 197 are not Cars196 classes \(1-196\)"):
        data_pipelines.load("cars196", str(copy), allow_partial=True)


def test_sop_reads_header_and_paths(sop_dir):
    # parent folder accepted
    splits = data_pipelines.load("sop", str(sop_dir.parent), expected=SOP_SIZES)
    np.testing.assert_array_equal(splits.train.labels, [1, 1, 1, 2, 2, 3, 3, 3])
    np.testing.assert_array_equal(splits.test.labels, [4, 4, 5, 5, 5])
    assert splits.train.paths[0] == os.path.join(str(sop_dir), "bicycle_final", "1_0.JPG")


def test_inshop_query_gallery_and_item_ids(inshop_dir):
    splits = data_pipelines.load("inshop", str(inshop_dir), expected=INSHOP_SIZES)
    np.testing.assert_array_equal(splits.train.labels, [1, 1, 2, 2])
    np.testing.assert_array_equal(splits.query.labels, [3, 4])
    np.testing.assert_array_equal(splits.gallery.labels, [3, 4, 4])
    np.testing.assert_array_equal(splits.test.labels, [3, 4, 3, 4, 4])
    assert splits.test.paths == splits.query.paths + splits.gallery.paths
    assert splits.query.paths[0].endswith("img/WOMEN/Dresses/id_00000003/04_1_front.jpg")


def test_sop_and_inshop_published_counts(sop_dir, inshop_dir, caplog):
    with pytest.raises(data_pipelines.IncompleteDatasetError,
                       match=r"train images: expected 59,551, found 8; train classes: expected "
                             r"11,318, found 3; test images: expected 60,502, found 5"):
        data_pipelines.load("sop", str(sop_dir))
    with pytest.raises(data_pipelines.IncompleteDatasetError,
                       match=r"train images: expected 25,882, found 4.*query images: expected "
                             r"14,218, found 2; gallery images: expected 12,612, found 3"):
        data_pipelines.load("inshop", str(inshop_dir))
    with caplog.at_level(logging.WARNING):
        splits = data_pipelines.load("inshop", str(inshop_dir), allow_partial=True)
    assert "test classes: expected 3,985, found 2" in caplog.text
    assert len(splits.test) == 5


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
        data_pipelines.load("sop", str(copy), expected=SOP_SIZES)
    message = str(error.value)
    assert "2 of 13 image files" in message and "1_0.JPG" in message and "5_1.JPG" in message
    assert "--allow_partial" in message


def test_allow_partial_drops_missing_files_and_names_them(sop_dir, tmp_path, caplog):
    copy = tmp_path / "Stanford_Online_Products"
    shutil.copytree(sop_dir, copy)
    os.remove(copy / "bicycle_final" / "5_1.JPG")
    with caplog.at_level(logging.WARNING):
        splits = data_pipelines.load("sop", str(copy), expected=SOP_SIZES, allow_partial=True)
    assert "1 of 13 image files" in caplog.text and "5_1.JPG" in caplog.text
    assert "test images: expected 5, found 4" in caplog.text
    np.testing.assert_array_equal(splits.test.labels, [4, 4, 5, 5])
    assert str(copy / "bicycle_final" / "5_1.JPG") not in splits.test.paths


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
    # The check options are accepted (and moot: no files) for the embedded data set.
    same = data_pipelines.load("digits", None, image_size=16, skip_corrupt=True,
                               allow_partial=True, cache_dir="")
    np.testing.assert_array_equal(same.train.images, splits.train.images)


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
