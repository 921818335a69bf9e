"""The up-front image check: strict full decodes, named bad files, skip/raise, the disk cache."""
import json
import logging
import os

import numpy as np
import pytest
from PIL import Image

from data_pipelines import augment
from data_pipelines import images
from data_pipelines.records import DatasetSplits, Records, concatenate


def _pixels(seed, height=30, width=40):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _save(path, image, **options):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image.save(path, **options)
    return str(path)


def _good_files(folder):
    """Valid images of every format and mode the check must accept."""
    rgb = Image.fromarray(_pixels(1))
    return [
        _save(folder / "rgb.jpg", rgb, format="JPEG", quality=90),
        _save(folder / "progressive.jpg", rgb, format="JPEG", progressive=True),
        _save(folder / "gray.jpg", rgb.convert("L"), format="JPEG"),
        _save(folder / "cmyk.jpg", rgb.convert("CMYK"), format="JPEG"),
        _save(folder / "rgb.png", rgb, format="PNG"),
        _save(folder / "gray_alpha.png", rgb.convert("LA"), format="PNG"),
        _save(folder / "palette.gif", rgb.convert("P"), format="GIF"),
        _save(folder / "rgb.bmp", rgb, format="BMP"),
    ]


def _bytes(path):
    with open(path, "rb") as handle:
        return handle.read()


def _write(path, data):
    with open(path, "wb") as handle:
        handle.write(data)
    return str(path)


def _bad_files(folder, damage):
    """{path: substring of its reason} for one file per kind of damage."""
    jpeg = _save(folder / "base.jpg", Image.fromarray(_pixels(2)), format="JPEG", quality=90)
    data = _bytes(jpeg)
    png = _bytes(_save(folder / "base.png", Image.fromarray(_pixels(3)), format="PNG"))
    header = _write(folder / "header.jpg", data)
    damage.header(header)
    middle = _write(folder / "middle.jpg", data)
    damage.middle(middle)
    idat = png.index(b"IDAT") + 20
    return {
        header: "undecodable JPEG (OSError: broken data stream",
        middle: "Corrupt JPEG data",
        # cut in the scan, end marker kept / lost
        _write(folder / "cut_eoi.jpg", data[: len(data) // 2] + b"\xff\xd9"): "Corrupt JPEG data",
        _write(folder / "cut.jpg", data[: len(data) // 2]): "corrupt JPEG",
        _write(folder / "page.jpg", b"<html>404</html>"): "not a JPEG/PNG/GIF/BMP file",
        _write(folder / "empty.png", b""): "empty file",
        _write(folder / "cut.png", png[: len(png) // 2]): "corrupt PNG",
        _write(folder / "crc.png", png[:idat] + bytes([png[idat] ^ 0xFF]) + png[idat + 1:]):
            "corrupt PNG",
        str(folder / "absent.jpg"): "unreadable",
        # PIL reads it, the pipeline's decoder (TF) does not
        _save(folder / "bits.bmp", Image.fromarray(_pixels(5)).convert("1"), format="BMP"):
            "BMP that TensorFlow cannot decode",
    }


def test_every_damage_is_named_and_valid_files_pass(tmp_path, damage):
    good = _good_files(tmp_path / "good")
    # A metadata-only libjpeg warning ("unknown JFIF revision number 2.01") is no damage.
    data = bytearray(_bytes(good[0]))
    data[data.index(b"JFIF\x00") + 5] = 2
    good.append(_write(tmp_path / "good" / "jfif2.jpg", bytes(data)))
    for path in good:
        assert images.decode_problem(path) is None, path
    bad = _bad_files(tmp_path / "bad", damage)
    for path, reason in bad.items():
        problem = images.decode_problem(path)
        assert problem is not None and reason in problem, (path, problem)


def test_mid_file_damage_is_what_tf_and_pil_decode_silently(tmp_path, damage):
    """Why the check is strict: the pipeline's decoder returns pixels for this file."""
    path = _save(tmp_path / "m.jpg", Image.fromarray(_pixels(4)), format="JPEG", quality=90)
    damage.middle(path)
    decoded = augment.decode(_bytes(path)).numpy()
    assert decoded.shape == (30, 40, 3)
    with Image.open(path) as image:
        image.load()
    assert "extraneous bytes" in images.decode_problem(path)


def test_scan_keeps_order_and_caches_by_size_and_mtime(tmp_path, monkeypatch,
                                                       image_check_cache):
    good = _good_files(tmp_path / "data")
    target = good[0]
    garbage = _write(tmp_path / "data" / "x.jpg", b"GIF? no")
    paths = [garbage] + good + [garbage]
    cache_dir = tmp_path / "cache"
    bad = images.scan(paths, num_threads=3, cache_dir=str(cache_dir))
    assert [p for p, _ in bad] == [garbage, garbage]
    (cache_file,) = cache_dir.glob("*.json")
    entries = json.loads(cache_file.read_text())["entries"]
    assert sorted(entries) == sorted(set(paths))
    assert entries[target][:2] == [os.stat(target).st_size, os.stat(target).st_mtime_ns]
    # Same size and mtime: the cached verdict is reused, the new bytes are not decoded. (A
    # fresh process: no file is known clean in memory.)
    monkeypatch.setattr(images, "_VERIFIED", {})
    stat = os.stat(target)
    _write(target, b"\x00" * stat.st_size)
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert images.scan([target], cache_dir=str(cache_dir)) == []
    # A new mtime makes the file decoded again.
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    ((path, reason),) = images.scan([target], cache_dir=str(cache_dir))
    assert path == target and "JPEG" in reason
    # cache_dir="": nothing written, not even to the default folder.
    assert images.scan(good[1:], cache_dir="") == []
    assert len(list(cache_dir.glob("*.json"))) == 1 and not image_check_cache.exists()


def _records(folder, classes=(1, 2, 3), per_class=3):
    paths, labels = [], []
    for cls in classes:
        for k in range(per_class):
            image = Image.fromarray(_pixels(cls * 10 + k))
            paths.append(_save(folder / f"c{cls}" / f"{k}.jpg", image, format="JPEG"))
            labels.append(cls)
    return Records(np.array(labels), paths=tuple(paths))


def test_bad_files_raise_with_the_flag_or_are_skipped(tmp_path, damage, caplog):
    records = _records(tmp_path / "data")
    header, middle = records.paths[1], records.paths[7]
    damage.header(header)
    damage.middle(middle)
    cache_dir = tmp_path / "cache"
    with pytest.raises(images.CorruptImageError) as error:
        images.check_images(records, cache_dir=str(cache_dir), name="toy")
    message = str(error.value)
    assert message.startswith("toy: 2 corrupt or unreadable image file(s)")
    assert header in message and middle in message
    assert "--skip_corrupt (skip_corrupt=True)" in message
    (report,) = cache_dir.glob("*.corrupt.txt")
    assert f"the full list is in {report}" in message
    assert [line.split("\t")[0] for line in report.read_text().splitlines()] == [header, middle]
    with caplog.at_level(logging.WARNING):
        kept = images.check_images(records, skip_corrupt=True, cache_dir=str(cache_dir),
                                   name="toy")
    assert f"toy: skipping 2 corrupt or unreadable image file(s) of 9; the full list is in " \
           f"{report}" in caplog.text
    assert kept.paths == tuple(p for p in records.paths if p not in (header, middle))
    np.testing.assert_array_equal(kept.labels, [1, 1, 2, 2, 2, 3, 3])
    # A fold cut from the checked records is known clean: not decoded again (no disk cache
    # here), so new bytes of the same size and mtime go unseen; a new mtime is decoded.
    fold = kept.select([0, 2, 4])
    stat = os.stat(fold.paths[1])
    _write(fold.paths[1], b"\x00" * stat.st_size)
    os.utime(fold.paths[1], ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert images.find_corrupt_images(fold) == []
    os.utime(fold.paths[1], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert [p for p, _ in images.find_corrupt_images(fold)] == [fold.paths[1]]


def test_skipping_a_whole_class_needs_allow_partial(tmp_path, caplog):
    records = _records(tmp_path / "data", classes=(5, 6), per_class=2)
    for path in records.paths[:2]:
        _write(path, b"not an image")
    with pytest.raises(images.CorruptImageError, match=r"leaves no image in records classes "
                                                       r"\[5\].*--allow_partial"):
        images.check_images(records, skip_corrupt=True, cache_dir="")
    with caplog.at_level(logging.WARNING):
        kept = images.check_images(records, skip_corrupt=True, allow_partial=True, cache_dir="",
                                   report_path=str(tmp_path / "bad.txt"))
    assert "drops whole classes (records classes [5])" in caplog.text
    np.testing.assert_array_equal(kept.labels, [6, 6])


def test_splits_are_checked_together_and_query_gallery_stay_consistent(tmp_path, damage):
    folder = tmp_path / "data"
    train = _records(folder / "train", classes=(1, 2), per_class=2)
    query = _records(folder / "query", classes=(3, 4), per_class=1)
    gallery = _records(folder / "gallery", classes=(3, 4), per_class=2)
    damage.middle(gallery.paths[1])
    damage.header(train.paths[0])
    splits = DatasetSplits("toy", train, concatenate(query, gallery), query, gallery)
    with pytest.raises(images.CorruptImageError) as error:
        images.check_images(splits, cache_dir="")
    assert "2 corrupt" in str(error.value)  # the gallery file is in test and gallery: once
    kept = images.check_images(splits, skip_corrupt=True, cache_dir="")
    assert kept.name == "toy" and kept.train.paths == train.paths[1:]
    assert kept.query.paths == query.paths
    assert kept.gallery.paths == (gallery.paths[0],) + gallery.paths[2:]
    assert kept.test.paths == kept.query.paths + kept.gallery.paths
    np.testing.assert_array_equal(kept.test.labels, [3, 4, 3, 4, 4])


def test_an_unwritable_cache_is_a_warning_not_an_error(tmp_path, caplog):
    blocker = _write(tmp_path / "file", b"x")  # a file where the cache folder should be
    records = _records(tmp_path / "data", classes=(1,), per_class=2)
    with caplog.at_level(logging.WARNING):
        assert images.check_images(records, cache_dir=blocker).paths == records.paths
    assert "cannot write the cache" in caplog.text
    in_memory = Records(np.array([0]), images=np.zeros((1, 4, 4, 3), np.uint8))
    assert images.check_images(in_memory) is in_memory
