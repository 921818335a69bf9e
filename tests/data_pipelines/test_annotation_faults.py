"""Issue 24 case 2: annotation files that list an image twice, with conflicting labels, or ids
that the other file does not know are errors naming the file and the line (never accepted)."""
import re
import shutil

import numpy as np
import pytest
import scipy.io

import data_pipelines


def _append(path, line):
    with open(path, "a") as handle:
        handle.write(line + "\n")


def _line_count(path):
    return sum(1 for _ in open(path))


def test_cub_duplicate_id_with_a_conflicting_label_names_file_and_line(cub_dir, tmp_path):
    """The issue's case: image 1 (class 99, a training class) listed again under test class
    101 was accepted and the image landed in the test split."""
    copy = tmp_path / "cub"
    shutil.copytree(cub_dir / "CUB_200_2011", copy)
    labels = copy / "image_class_labels.txt"
    _append(labels, "1 101")
    line = _line_count(labels)
    with pytest.raises(ValueError) as raised:
        data_pipelines.load("cub", str(copy), allow_partial=True)
    message = str(raised.value)
    assert f"{labels} line {line}: image id 1 is listed twice" in message
    assert "with class 101, conflicting with class 99" in message and "line 1" in message


def test_cub_duplicate_id_in_images_txt_and_ids_outside_it(cub_dir, tmp_path):
    copy = tmp_path / "cub"
    shutil.copytree(cub_dir / "CUB_200_2011", copy)
    images = copy / "images.txt"
    original = images.read_text()
    _append(images, "2 099.Bird_99/Bird_99_1.jpg")  # the same line twice
    with pytest.raises(ValueError, match=re.escape(f"{images} line 13: image id 2 is listed "
                                                   "twice (already at")):
        data_pipelines.load("cub", str(copy), allow_partial=True)
    images.write_text(original)
    labels = copy / "image_class_labels.txt"
    _append(labels, "77 100")  # an id images.txt does not list
    with pytest.raises(ValueError, match=re.escape(f"{labels} line 13: image id 77 is not in "
                                                   f"{images}")):
        data_pipelines.load("cub", str(copy), allow_partial=True)


def test_cars_duplicate_image_with_another_class_names_the_entry(cars_dir, tmp_path):
    copy = tmp_path / "cars"
    shutil.copytree(cars_dir, copy)
    mat = scipy.io.loadmat(str(copy / "cars_annos.mat"))
    annotations = mat["annotations"]
    twice = np.concatenate([annotations, annotations[:, :1].copy()], axis=1)
    twice[0, -1]["class"] = np.array([[99]], np.uint8)  # image 1: class 97 and now 99
    scipy.io.savemat(str(copy / "cars_annos.mat"), {"annotations": twice})
    with pytest.raises(ValueError, match=re.escape(
            "cars_annos.mat annotations entry 13: relative_im_path car_ims/000001.jpg is "
            "listed twice (with class 99, conflicting with class 97 at")):
        data_pipelines.load("cars196", str(copy), allow_partial=True)


def test_sop_duplicate_ids_and_an_image_in_both_splits(sop_dir, tmp_path):
    copy = tmp_path / "Stanford_Online_Products"
    shutil.copytree(sop_dir, copy)
    train = copy / "Ebay_train.txt"
    original = train.read_text()
    _append(train, "1 2 1 bicycle_final/2_0.JPG")  # id 1 again, with class 2
    with pytest.raises(ValueError, match=re.escape(
            f"{train} line {_line_count(train)}: image_id 1 is listed twice (with class_id 2, "
            "conflicting with class_id 1 at")):
        data_pipelines.load("sop", str(copy), allow_partial=True)
    train.write_text(original)
    test = copy / "Ebay_test.txt"
    _append(test, "99 4 1 bicycle_final/1_0.JPG")  # a training image among the test images
    with pytest.raises(ValueError, match=re.escape(
            f"{test} line {_line_count(test)}: image bicycle_final/1_0.JPG is listed twice")):
        data_pipelines.load("sop", str(copy), allow_partial=True)


def test_inshop_image_listed_as_train_and_query(inshop_dir, tmp_path):
    copy = tmp_path / "inshop"
    shutil.copytree(inshop_dir, copy)
    partition = copy / "Eval" / "list_eval_partition.txt"
    _append(partition, "img/WOMEN/Dresses/id_00000001/00_1_front.jpg id_00000001 query")
    with pytest.raises(ValueError, match=re.escape(
            f"{partition} line {_line_count(partition)}: image "
            "img/WOMEN/Dresses/id_00000001/00_1_front.jpg is listed twice (with item and status "
            "id_00000001 query, conflicting with item and status id_00000001 train at")):
        data_pipelines.load("inshop", str(copy), allow_partial=True)
