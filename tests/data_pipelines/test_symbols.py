"""The `symbols` pretraining set: its classes are disjoint from both glyphs splits.

The disjointness checks are independent of the module's code path: code points against the
glyphs class table (every member of every merged class, both splits), Unicode names and NFKC
forms by the standard library, and shapes by a direct L1 comparison of PIL renderings made here.
"""
import unicodedata

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont
from scipy.spatial.distance import cdist

from data_pipelines import glyphs, symbols


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    return symbols.cached_class_table(str(tmp_path_factory.mktemp("symbols")))


@pytest.fixture(scope="module")
def glyph_table(tmp_path_factory):
    return glyphs.cached_class_table(cache_dir=str(tmp_path_factory.mktemp("glyphs")))


def test_code_points_disjoint_from_both_glyphs_splits(table, glyph_table):
    glyph_points = {cp for cls in glyph_table for cp in cls.members}
    train = {cp for cls in glyph_table if cls.label < len(glyph_table) // 2 for cp in cls.members}
    assert train and glyph_points - train  # both splits are represented
    symbol_points = {cp for cls in table for cp in cls.members}
    assert not symbol_points & glyph_points
    assert len(table) > 500  # a many-class pretraining set


def test_no_letter_of_the_benchmark_scripts_nor_digit_even_by_compatibility(table):
    for cls in table:
        for cp in cls.members:
            char = chr(cp)
            assert not unicodedata.name(char, "").startswith(("LATIN", "GREEK", "CYRILLIC"))
            for part in unicodedata.normalize("NFKC", char):
                assert not unicodedata.category(part).startswith("N"), char
                assert not (unicodedata.category(part).startswith("L") and unicodedata.name(
                    part, "").startswith(("LATIN", "GREEK", "CYRILLIC"))), char


@pytest.mark.parametrize("char", ["\u2126", "\u212a", "\u210e", "\u00b2", "\u00bd", "\u02b0",
                                  "\u03a3", "5"])
def test_lookalikes_by_name_are_excluded(char):
    # Ohm sign, Kelvin sign, Planck constant, superscript two, one half, modifier h, Sigma, 5
    assert symbols.excluded_by_name(ord(char))


def _render(char, path, size=32):
    canvas = size * glyphs.SUPERSAMPLE
    font = ImageFont.truetype(path, int(round(glyphs.FONT_SIZE * canvas)))
    image = Image.new("L", (canvas, canvas), 0)
    left, _, right, _ = font.getbbox(char, anchor="ls")
    ImageDraw.Draw(image).text((canvas / 2 - (left + right) / 2, glyphs.BASELINE * canvas),
                               char, font=font, fill=255, anchor="ls")
    return np.asarray(image.resize((size, size), Image.BOX), np.float64) / 255.0


def test_no_symbol_renders_like_a_glyphs_character(table, glyph_table):
    """In every DejaVu face, each class's rendering is farther than the tolerance (L1 over the
    smaller ink) from every glyphs character's rendering (all members of all classes)."""
    paths = symbols.face_paths()
    glyph_chars = [chr(cp) for cls in glyph_table for cp in cls.members]
    symbol_chars = [chr(cls.representative) for cls in table]
    for path in paths[::3]:  # regular, bold, oblique, bold oblique of each family: one per family
        g = np.stack([_render(c, path).ravel() for c in glyph_chars])
        s = np.stack([_render(c, path).ravel() for c in symbol_chars])
        l1 = cdist(s, g, metric="cityblock")
        ink = np.minimum(s.sum(1)[:, None], g.sum(1)[None, :])
        assert (l1 / np.maximum(ink, 1e-6)).min() > symbols.DISJOINT_TOLERANCE, path


def test_shape_rule_on_a_hand_made_case():
    # a symbol identical to a benchmark character (distance 0) and one far away
    bench = np.zeros((1, 1, 4, 4))
    bench[0, 0, :, 1] = 1.0  # a vertical bar, ink 4
    same = bench.copy()
    far = np.zeros((1, 1, 4, 4))
    far[0, 0, 1, :] = 1.0  # a horizontal bar sharing one pixel: L1 = 3 + 3, ink 4
    kept = symbols.shape_disjoint(np.concatenate([same, far]), bench)
    np.testing.assert_array_equal(kept, [False, True])
    np.testing.assert_allclose(symbols.nearest_benchmark_distance(far, bench), [[6.0 / 4.0]])


def test_load_images_labels_and_held_out_draws(tmp_path):
    small = symbols.load(image_size=16, samples_per_face=1, seed=0, cache_dir=str(tmp_path))
    assert small.images.shape == (small.num_classes * 12, 16, 16, 3)
    assert small.images.dtype == np.uint8
    np.testing.assert_array_equal(np.bincount(small.labels), np.full(small.num_classes, 12))
    other = symbols.load(image_size=16, samples_per_face=1, seed=1, cache_dir=str(tmp_path))
    assert not np.array_equal(small.images, other.images)  # new jitter draws
    again = symbols.load(image_size=16, samples_per_face=1, seed=0, cache_dir=str(tmp_path))
    np.testing.assert_array_equal(small.images, again.images)  # from the cache, identical
