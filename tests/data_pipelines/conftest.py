"""Tiny data sets in exactly the on-disk layouts of SPEC §7, with real JPEG files."""
import os

import numpy as np
from PIL import Image
import pytest
import scipy.io

IMAGE_W, IMAGE_H = 40, 30


def write_jpeg(path, seed):
    """A 40x30 RGB JPEG with seeded random content."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (IMAGE_H, IMAGE_W, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG", quality=90)


def write_cub_layout(root, classes, per_class, boxes=False):
    """CUB_200_2011 files under ``root``: ``per_class`` JPEGs of each class id in ``classes``
    (folder ``NNN.Bird_N``), images.txt, image_class_labels.txt, classes.txt and, with
    ``boxes``, bounding_boxes.txt (boxes reaching past the image's bottom edge)."""
    images, labels, names, box_lines = [], [], [], []
    image_id = 0
    for cls in classes:
        folder = f"{cls:03d}.Bird_{cls}"
        names.append(f"{cls} {folder}")
        for k in range(per_class):
            image_id += 1
            rel = f"{folder}/Bird_{cls}_{k}.jpg"
            write_jpeg(str(root / "images" / rel), image_id)
            images.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {cls}")
            box_lines.append(f"{image_id} {2 + k}.6 3.4 {30 + k}.0 40.0")  # y + h past the edge
    (root / "images.txt").write_text("\n".join(images) + "\n")
    (root / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (root / "classes.txt").write_text("\n".join(names) + "\n")
    if boxes:
        (root / "bounding_boxes.txt").write_text("\n".join(box_lines) + "\n")


@pytest.fixture(autouse=True)
def image_check_cache(tmp_path_factory, monkeypatch):
    """Keeps the image-check cache (images.default_cache_dir) out of the home folder."""
    cache_home = tmp_path_factory.mktemp("xdg_cache")
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache_home))
    return cache_home / "ccp" / "image_checks"


@pytest.fixture(scope="module")
def cub_dir(tmp_path_factory):
    """CUB_200_2011 with classes 99..102 (2 train, 2 test), 3 images each, inside a parent."""
    parent = tmp_path_factory.mktemp("cub_parent")
    write_cub_layout(parent / "CUB_200_2011", (99, 100, 101, 102), 3, boxes=True)
    return parent


@pytest.fixture(scope="module")
def cars_dir(tmp_path_factory):
    """Cars196: classes 97..100 (97, 98 train; 99, 100 test), 3 images each; mixed test flags."""
    root = tmp_path_factory.mktemp("cars196")
    fields = ["relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test"]
    rows = []
    image_id = 0
    for cls in (97, 98, 99, 100):
        for k in range(3):
            image_id += 1
            rel = f"car_ims/{image_id:06d}.jpg"
            write_jpeg(str(root / rel), 100 + image_id)
            rows.append((np.array([rel]), np.array([[1]], np.uint8), np.array([[2]], np.uint8),
                         np.array([[30]], np.uint8), np.array([[20]], np.uint8),
                         np.array([[cls]], np.uint8), np.array([[k % 2]], np.uint8)))
    annotations = np.empty((1, len(rows)), dtype=[(f, object) for f in fields])
    for i, row in enumerate(rows):
        annotations[0, i] = row
    scipy.io.savemat(str(root / "cars_annos.mat"), {
        "annotations": annotations,
        "class_names": np.array([[f"car {c}" for c in range(1, 197)]], dtype=object)})
    return root


@pytest.fixture(scope="module")
def sop_dir(tmp_path_factory):
    """Stanford_Online_Products: train classes 1-3, test classes 4-5, 2-3 images each."""
    root = tmp_path_factory.mktemp("sop") / "Stanford_Online_Products"
    header = "image_id class_id super_class_id path"
    image_id = 0
    for filename, classes in (("Ebay_train.txt", (1, 2, 3)), ("Ebay_test.txt", (4, 5))):
        lines = [header]
        for cls in classes:
            for k in range(2 + cls % 2):
                image_id += 1
                rel = f"bicycle_final/{cls}_{k}.JPG"
                write_jpeg(str(root / rel), 200 + image_id)
                lines.append(f"{image_id} {cls} 1 {rel}")
        (root / filename).write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def inshop_dir(tmp_path_factory):
    """In-shop: train items 1-2, test items 3-4 with query and gallery images."""
    root = tmp_path_factory.mktemp("inshop")
    entries = [("id_00000001", "train"), ("id_00000001", "train"), ("id_00000002", "train"),
               ("id_00000002", "train"), ("id_00000003", "query"), ("id_00000003", "gallery"),
               ("id_00000004", "query"), ("id_00000004", "gallery"), ("id_00000004", "gallery")]
    lines = [str(len(entries)), "image_name item_id evaluation_status"]
    for k, (item, status) in enumerate(entries):
        rel = f"img/WOMEN/Dresses/{item}/{k:02d}_1_front.jpg"
        write_jpeg(str(root / rel), 300 + k)
        lines.append(f"{rel}    {item}    {status}")
    (root / "Eval").mkdir()
    (root / "Eval" / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture()
def jpeg_records(tmp_path):
    """File-backed Records: 6 classes (ids 10..15) x 5 JPEGs of 40x30."""
    from data_pipelines.records import Records
    paths, labels = [], []
    for cls in range(10, 16):
        for k in range(5):
            path = str(tmp_path / f"c{cls}" / f"{k}.jpg")
            write_jpeg(path, cls * 10 + k)
            paths.append(path)
            labels.append(cls)
    return Records(labels=np.array(labels), paths=tuple(paths))
