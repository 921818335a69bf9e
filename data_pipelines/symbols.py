"""`symbols`: a pretraining set rendered from matplotlib's fonts, disjoint from `glyphs`.

The "ImageNet analogue" of the embedded benchmark (issue "Where CCP helps"): the paper fine-tunes
a backbone pretrained on a large labelled set whose classes are not the benchmark's. Here the
benchmark is `glyphs` (Latin / Greek / Cyrillic letters and digits, data_pipelines/glyphs.py) and
the pretraining set is every *other* character the 12 DejaVu faces (Sans, Serif, Sans Mono x
regular, bold, oblique/italic, bold oblique/italic) all cover: Armenian and Georgian letters,
arrows, box drawing and block elements, geometric shapes, mathematical operators, punctuation,
currency and other signs.

**Disjoint from both glyphs splits**, by three rules (:func:`candidate_symbols`,
:func:`shape_disjoint`; tests/data_pipelines/test_symbols.py checks the result independently):

1. no code point of a Latin, Greek or Cyrillic character (by Unicode name), no digit, no other
   number (super/subscripts, fractions: category ``No``) and no modifier letter (``Lm``: small
   raised letters);
2. no character whose compatibility form (NFKC) contains such a letter or a digit (Ohm sign ->
   Greek Omega, Kelvin sign -> K, Planck constant -> h, ...);
3. no character whose canonical rendering, in any of the 12 faces, is within
   ``DISJOINT_TOLERANCE`` (0.3, L1 over the smaller ink, glyphs' measure; 15x the tolerance
   under which glyphs merges two characters as the same shape) of any glyphs character's
   rendering in the same face (e.g. N-ary summation vs Sigma, Armenian O-like letters vs O).

Characters that are the same shape among themselves are merged with glyphs' rule (same in at
least ``MERGE_MIN_FACES`` faces). Classes are numbered by code point; images are jittered exactly
like glyphs (affine, stroke weight, pixel noise; :func:`glyphs.render_samples`), one per face and
``samples_per_face`` draw. Training images use jitter seed ``seed``, the held-out images that
measure pretraining accuracy use ``seed + 1`` (new draws of the same classes and faces).

Rendering takes about a minute and is cached like glyphs (``$CCP_CACHE_DIR/symbols``).
"""
import dataclasses
import json
import os
import unicodedata

import numpy as np
from absl import logging

from data_pipelines import glyphs

VERSION = 1
FACE_COUNT = 12  # glyphs.FACE_FILES[:12]: the DejaVu faces (STIX covers few of these blocks)
MAX_CODE_POINT = 0x10000  # the Basic Multilingual Plane
EXCLUDED_SCRIPTS = ("LATIN", "GREEK", "CYRILLIC", "DIGIT")
EXCLUDED_CATEGORIES = ("Nd", "No", "Nl", "Lm", "Mn", "Mc", "Me", "Zs", "Zl", "Zp", "Cc", "Cf",
                       "Co", "Cs", "Cn")
DISJOINT_TOLERANCE = 0.3
MERGE_MIN_FACES = 4


def face_paths():
    """The 12 DejaVu face files (absolute paths)."""
    return glyphs.face_paths()[:FACE_COUNT]


def _is_benchmark_like(char):
    """True for a Latin/Greek/Cyrillic letter or any digit (rule 1's letters)."""
    category = unicodedata.category(char)
    if category[0] == "N":
        return True
    return category[0] == "L" and unicodedata.name(char, "").startswith(EXCLUDED_SCRIPTS)


def excluded_by_name(code_point):
    """Rules 1 and 2 of the module docstring for one code point (True: not a symbols class)."""
    char = chr(int(code_point))
    if unicodedata.category(char) in EXCLUDED_CATEGORIES:
        return True
    if unicodedata.name(char, "").startswith(EXCLUDED_SCRIPTS) or _is_benchmark_like(char):
        return True
    return any(_is_benchmark_like(c) for c in unicodedata.normalize("NFKC", char))


def candidate_symbols(paths=None):
    """int [N]: sorted code points that every face covers and rules 1-2 keep."""
    from matplotlib.ft2font import FT2Font

    paths = face_paths() if paths is None else paths
    charmaps = [set(FT2Font(path).get_charmap()) for path in paths]
    common = set.intersection(*charmaps)
    return np.asarray(sorted(cp for cp in common
                             if 0x20 < cp < MAX_CODE_POINT and not excluded_by_name(cp)),
                      np.int64)


def nearest_benchmark_distance(symbol_canonical, benchmark_canonical):
    """Per symbol and face, the smallest glyphs distance to any benchmark character.

    Args:
      symbol_canonical: float [N, F, H, W] renderings of the symbols, in [0, 1].
      benchmark_canonical: float [M, F, H, W] renderings of the glyphs characters, same faces.
    Returns:
      float64 [N, F]: ``min_m L1(s_f - b_mf) / min(ink(s_f), ink(b_mf))``.
    """
    from scipy.spatial.distance import cdist

    s_flat, s_ink = glyphs.flat_and_ink(symbol_canonical)
    b_flat, b_ink = glyphs.flat_and_ink(benchmark_canonical)
    out = np.empty(s_ink.shape)
    for f in range(s_ink.shape[1]):
        l1 = cdist(s_flat[:, f], b_flat[:, f], metric="cityblock")
        out[:, f] = (l1 / np.minimum(s_ink[:, None, f], b_ink[None, :, f])).min(axis=1)
    return out


def shape_disjoint(symbol_canonical, benchmark_canonical, tolerance=DISJOINT_TOLERANCE):
    """bool [N]: rule 3, the symbols farther than `tolerance` from every benchmark character in
    every face."""
    return np.all(nearest_benchmark_distance(symbol_canonical, benchmark_canonical) > tolerance,
                  axis=1)


def symbol_groups(paths=None):
    """Code-point tuples of the classes (rules 1-3, then glyphs' merge rule), sorted."""
    paths = face_paths() if paths is None else paths
    code_points = candidate_symbols(paths)
    canonical = glyphs.render_canonical(code_points, glyphs.MERGE_SIZE, paths)
    benchmark = glyphs.render_canonical(glyphs.candidate_characters(), glyphs.MERGE_SIZE, paths)
    keep = shape_disjoint(canonical, benchmark)
    code_points, canonical = code_points[keep], canonical[keep]
    groups = glyphs.merge_groups(glyphs.same_face_counts(canonical), MERGE_MIN_FACES)
    return [tuple(int(code_points[i]) for i in group) for group in groups]


def class_table(paths=None):
    """list of glyphs.GlyphClass, labels 0..C-1 in code-point order of the representatives."""
    return [glyphs.GlyphClass(label=label, representative=group[0], members=group)
            for label, group in enumerate(symbol_groups(paths))]


def _cache_dir(cache_dir):
    if cache_dir is not None:
        return cache_dir
    return os.path.join(glyphs.cache_root(), "symbols")


def fingerprint():
    """What the class table and renderings depend on (fonts, rasterizer, the rules)."""
    return {**glyphs.rasterizer_fingerprint(face_paths()), "symbols_version": VERSION,
            "rules": [DISJOINT_TOLERANCE, MERGE_MIN_FACES, glyphs.MERGE_SIZE,
                      glyphs.SAME_TOLERANCE]}


def cached_class_table(cache_dir=None):
    """:func:`class_table`, cached as JSON (it is the slow part: about a minute)."""
    path = os.path.join(_cache_dir(cache_dir), f"classes_{glyphs.digest(fingerprint())}.json")
    if os.path.exists(path):
        with open(path) as handle:
            return [glyphs.GlyphClass(c["label"], c["representative"], tuple(c["members"]))
                    for c in json.load(handle)]
    table = class_table()

    def write(tmp):
        with open(tmp, "w") as handle:
            json.dump([dataclasses.asdict(c) for c in table], handle)

    glyphs.atomic_write(path, write)
    return table


@dataclasses.dataclass(frozen=True)
class SymbolImages:
    """The pretraining set: uint8 images [N, S, S, 3], int64 labels [N] in [0, C), its classes."""

    images: np.ndarray
    labels: np.ndarray
    classes: list

    @property
    def num_classes(self):
        return len(self.classes)


def load(image_size=32, samples_per_face=2, seed=0, cache_dir=None):
    """The rendered symbols images (cached).

    Args:
      image_size: side in pixels (>= 16).
      samples_per_face: jittered images per class and face (12 faces).
      seed: jitter seed (image (class, face, s) draws ``default_rng([seed, code point, f, s])``).
      cache_dir: folder of the cache; default ``$CCP_CACHE_DIR/symbols`` or
        ``~/.cache/ccp/symbols``.
    Returns:
      SymbolImages with ``C * 12 * samples_per_face`` images ordered by class, face, sample.
    """
    if int(image_size) != image_size or image_size < 16:
        raise ValueError(f"symbols: image_size must be an integer >= 16, got {image_size!r}")
    if int(samples_per_face) != samples_per_face or samples_per_face < 1:
        raise ValueError(
            f"symbols: samples_per_face must be an integer >= 1, got {samples_per_face!r}")
    table = cached_class_table(cache_dir)
    key = glyphs.digest({**fingerprint(), "image_size": int(image_size),
                          "samples_per_face": int(samples_per_face), "seed": int(seed)})
    path = os.path.join(_cache_dir(cache_dir), f"symbols_{key}.npz")
    if os.path.exists(path):
        with np.load(path) as stored:
            gray, labels = stored["images"], stored["labels"]
    else:
        gray, labels = glyphs.render_samples(table, int(image_size), int(samples_per_face),
                                             int(seed), face_paths())

        def write(tmp):
            with open(tmp, "wb") as handle:
                np.savez(handle, images=gray, labels=labels)

        glyphs.atomic_write(path, write)
        logging.info("symbols: rendered %d images of %d classes to %s", len(labels),
                     len(table), path)
    return SymbolImages(np.repeat(gray[..., None], 3, axis=-1), labels, table)
