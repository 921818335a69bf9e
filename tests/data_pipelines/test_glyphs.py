"""The embedded `glyphs` data set: character coverage, the merge rule, rendering, split, cache."""
import os
import unicodedata

import numpy as np
import pytest
from matplotlib.ft2font import FT2Font

import data_pipelines
from data_pipelines import glyphs


@pytest.fixture(scope="module")
def table():
    """The full class table (rendered once per test module: ~5 s)."""
    return glyphs.class_table()


def test_candidates_are_letters_and_digits_every_face_covers():
    code_points = glyphs.candidate_characters()
    charmaps = [set(FT2Font(path).get_charmap()) for path in glyphs.face_paths()]
    assert len(glyphs.face_paths()) == 16
    assert np.all(np.diff(code_points) > 0)
    for cp in code_points:
        char = chr(int(cp))
        assert unicodedata.category(char) in ("Lu", "Ll", "Nd"), char
        assert unicodedata.name(char).split()[0] in ("LATIN", "GREEK", "CYRILLIC", "DIGIT")
        assert all(int(cp) in charmap for charmap in charmaps), char
    chars = {chr(int(cp)) for cp in code_points}
    assert set("0123456789AZaz") <= chars and {"\u0416", "\u03a9", "\u00e9"} <= chars  # Zh Omega
    assert not {"!", " ", "\u00aa", "\u02b0"} & chars  # punctuation, Lo, Lm
    # Independent count: a face-by-face scan of every code point in the ranges.
    expected = [cp for cp in range(0x30, 0x530)
                if (0x250 > cp or cp >= 0x370) and unicodedata.category(chr(cp)) in
                ("Lu", "Ll", "Nd") and unicodedata.name(chr(cp), "").split(" ")[0] in
                ("LATIN", "GREEK", "CYRILLIC", "DIGIT") and all(cp in c for c in charmaps)]
    np.testing.assert_array_equal(code_points, expected)


def test_face_distances_match_a_float64_loop():
    rng = np.random.default_rng(0)
    canonical = rng.uniform(0, 1, (5, 3, 4, 4)) * (rng.uniform(0, 1, (5, 3, 4, 4)) > 0.5)
    got = glyphs.face_distances(canonical)
    for f in range(3):
        for i in range(5):
            for j in range(5):
                a, b = canonical[i, f].astype(np.float64), canonical[j, f].astype(np.float64)
                want = np.abs(a - b).sum() / min(a.sum(), b.sum())
                assert got[f, i, j] == pytest.approx(want, rel=1e-5)


def test_same_face_counts_equals_the_brute_force_count():
    # Near-duplicates (within and just outside the tolerance) among random images.
    rng = np.random.default_rng(1)
    base = (rng.uniform(0, 1, (6, 4, 8, 8)) > 0.6).astype(np.float64)
    near = base.copy()
    near[:, :, 0, 0] = 1.0 - near[:, :, 0, 0]  # one pixel of ~25 ink pixels: ~0.04 apart
    canonical = np.concatenate([base, base, near])
    for tolerance in (0.0, 0.02, 0.05):
        want = (glyphs.face_distances(canonical) <= tolerance).sum(0)
        np.testing.assert_array_equal(glyphs.same_face_counts(canonical, tolerance), want)


def test_merge_groups_threshold_and_transitivity():
    counts = np.diag([16, 16, 16, 16, 16])
    counts[0, 2] = counts[2, 0] = 4   # at the threshold: merged
    counts[2, 4] = counts[4, 2] = 5   # chains 0-2-4 although 0-4 are never the same
    counts[1, 3] = counts[3, 1] = 3   # below: kept apart
    assert glyphs.merge_groups(counts, min_faces=4) == [(0, 2, 4), (1,), (3,)]
    assert glyphs.merge_groups(counts, min_faces=6) == [(0,), (1,), (2,), (3,), (4,)]


def test_merge_rule_on_real_renderings():
    """Cross-script homoglyphs merge; accent variants, case and digit/letter stay apart."""
    chars = "A\u0391\u0410O\u039f\u041e0E\u00c8\u0116eo3\u0417lI1"
    code_points = [ord(c) for c in chars]
    canonical = glyphs.render_canonical(code_points)
    groups = glyphs.merge_groups(glyphs.same_face_counts(canonical))
    merged = sorted("".join(chars[i] for i in g) for g in groups)
    assert merged == sorted(["A\u0391\u0410", "O\u039f\u041e", "0", "E", "\u00c8", "\u0116",
                             "e", "o", "3\u0417", "l", "I", "1"])


def test_class_table_counts_and_split(table):
    code_points = glyphs.candidate_characters()
    members = sorted(cp for cls in table for cp in cls.members)
    np.testing.assert_array_equal(members, code_points)  # a partition of the characters
    assert [cls.label for cls in table] == list(range(len(table)))
    assert all(cls.representative == min(cls.members) for cls in table)
    assert 380 <= len(table) <= 460
    by_char = {chr(cp): cls.label for cls in table for cp in cls.members}
    assert by_char["A"] == by_char["\u0391"] == by_char["\u0410"]
    assert len({by_char[c] for c in "aAoO0"}) == 5
    # The split is fixed by split_seed and moves with it.
    groups = sorted((cls.members for cls in table), key=lambda m: m[0])
    assert glyphs.label_classes(groups, split_seed=0) == table
    other = {cls.representative: cls.label for cls in glyphs.label_classes(groups, 1)}
    assert [other[cls.representative] for cls in table] != [cls.label for cls in table]


def test_rendering_is_deterministic_and_per_image_seeded(table):
    few = table[:3]
    images, labels = glyphs.render_samples(few, image_size=24, samples_per_face=2, seed=5)
    assert images.shape == (3 * 16 * 2, 24, 24) and images.dtype == np.uint8
    np.testing.assert_array_equal(labels, np.repeat([c.label for c in few], 32))
    again, _ = glyphs.render_samples(few, image_size=24, samples_per_face=2, seed=5)
    np.testing.assert_array_equal(images, again)
    # An image depends only on (seed, character, face, sample), not on the other classes.
    alone, _ = glyphs.render_samples(few[2:], image_size=24, samples_per_face=2, seed=5)
    np.testing.assert_array_equal(alone, images[64:])
    other_seed, _ = glyphs.render_samples(few, image_size=24, samples_per_face=2, seed=6)
    assert np.mean(other_seed != images) > 0.3
    # The two samples of a (class, face) differ (jitter), the glyph is drawn (ink present).
    assert np.mean(images[0] != images[1]) > 0.3
    assert all(img.max() > 128 for img in images)


def test_load_splits_and_cache(tmp_path, table, monkeypatch):
    # 24 of the real classes (the full set renders the same way, only longer).
    groups = sorted((cls.members for cls in table), key=lambda m: m[0])[:24]
    monkeypatch.setattr(glyphs, "class_table",
                        lambda split_seed=0: glyphs.label_classes(groups, split_seed))
    cache = str(tmp_path / "cache")
    splits = data_pipelines.load("glyphs", image_size=16, samples_per_face=1,
                                 render_cache_dir=cache)
    assert splits.name == "glyphs" and splits.query is None
    np.testing.assert_array_equal(splits.train.classes, np.arange(12))
    np.testing.assert_array_equal(splits.test.classes, np.arange(12, 24))
    assert len(splits.train) == 16 * 12 and len(splits.test) == 16 * 12
    assert splits.train.images.shape[1:] == (16, 16, 3) and splits.train.in_memory
    np.testing.assert_array_equal(splits.train.images[..., 0], splits.train.images[..., 2])
    files = sorted(os.listdir(cache))
    assert len(files) == 2 and files[0].startswith("classes_") and files[1].startswith("glyphs_")
    # A second load reads the cache: nothing is rendered (rendering would fail here).
    monkeypatch.setattr(glyphs, "render_samples", None)
    monkeypatch.setattr(glyphs, "class_table", None)
    cached = data_pipelines.load("glyphs", image_size=16, samples_per_face=1,
                                 render_cache_dir=cache)
    np.testing.assert_array_equal(cached.train.images, splits.train.images)
    np.testing.assert_array_equal(cached.test.labels, splits.test.labels)
    # Other parameters are another cache entry.
    assert glyphs.cache_key(16, 1, 0, 0) != glyphs.cache_key(16, 1, 1, 0)
    assert glyphs.cache_key(16, 1, 0, 0) != glyphs.cache_key(24, 1, 0, 0)
    # MLRC folds on the training half: disjoint, covering; train and test classes disjoint.
    folds = data_pipelines.class_folds(splits.train, num_folds=4)
    val = [set(f.val.classes) for f in folds]
    assert set().union(*val) == set(range(12)) and sum(map(len, val)) == 12
    assert not set(splits.train.classes) & set(splits.test.classes)


def test_bad_arguments_name_the_option(tmp_path):
    with pytest.raises(ValueError, match="image_size"):
        glyphs.load(image_size=8, render_cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="samples_per_face"):
        glyphs.load(samples_per_face=0, render_cache_dir=str(tmp_path))
