"""`glyphs`: an embedded many-class zero-shot data set rendered from matplotlib's typefaces.

No download: the images are rendered (Pillow's FreeType rasterizer) from the 16 TrueType faces
that matplotlib ships in ``mpl-data/fonts/ttf`` (both are declared dependencies):

- DejaVu Sans, DejaVu Serif, DejaVu Sans Mono: regular, bold, oblique/italic, bold oblique/italic;
- STIX General: regular, bold, italic, bold italic.
(matplotlib also ships DejaVu "Display", STIX "NonUni"/size variants, Computer Modern and
LastResort; those are symbol or single-style faces and are not used.)

**Classes** are characters: the letters (Unicode categories Lu, Ll) of the Latin, Greek and
Cyrillic scripts in U+0000-U+024F and U+0370-U+052F, plus the digits 0-9, that *every* one of
the 16 faces covers (462 code points, bounded by STIX). Characters whose renderings are the same
shape are merged into one class (the **merge rule**, :func:`same_face_counts` +
:func:`merge_groups`):

- the canonical rendering of a character in a face is its un-jittered image at
  ``MERGE_SIZE`` = 32 pixels (fixed, so the class set does not depend on ``image_size``);
- two characters are *the same in a face* when the L1 distance of their canonical renderings
  is at most ``SAME_TOLERANCE`` (0.02) of the smaller one's ink (identical outlines give 0; the
  smallest accent difference, e.g. E-grave vs E-dot, gives >= 0.034 in all but a rare face);
- two characters are merged when they are the same in at least ``MERGE_MIN_FACES`` (4) of the 16
  faces, i.e. when >= 1/4 of their images would be indistinguishable; merging is transitive.
The merged class is rendered from its lowest code point (its *representative*); its other members
are aliases. This merges Latin A / Greek Alpha / Cyrillic A, O / Omicron / Cyrillic O,
3 / Cyrillic Ze, Eth / D-stroke, ... (see :func:`class_table`): 462 characters
become 405 classes (Pillow 13, matplotlib 3.10).

**Images**: every class in every face, ``samples_per_face`` times, each with seeded random
jitter: affine (scale 0.85-1.1, aspect 0.92-1.08, rotation +-8 degrees, shear +-0.12, shift
+-6 % of the side), stroke weight (dilate / half-erode / unchanged at the 2x supersampled
canvas) and additive pixel noise. Glyphs sit on a fixed baseline with a fixed font size, so
size and height (``o`` vs ``O``) stay informative. White strokes on black, uint8, repeated to 3
channels. Each class has 16 x ``samples_per_face`` images in several visual modes (serif / sans
/ mono, upright / italic, regular / bold). Default ``samples_per_face`` = 1: 16 images per
class, 6,480 in all (3,232 train / 3,248 test): many-class retrieval that is cheap on 2 CPU
cores (training adds random crops on top).

**Zero-shot split**: class ids 0..C-1 are assigned by a permutation drawn from ``split_seed``;
ids ``< C // 2`` train, the rest test. MLRC folds (data_pipelines.folds) cut the training ids
into contiguous groups, i.e. random groups of characters.

Rendering takes seconds; the result is cached on disk as an ``.npz`` named by a hash of every
parameter, the module's ``VERSION``, the font files and the Pillow/FreeType versions
(``$CCP_CACHE_DIR/glyphs`` or ``~/.cache/ccp/glyphs``).
"""
import dataclasses
import hashlib
import json
import os
import unicodedata

import numpy as np
from absl import logging

from data_pipelines.records import DatasetSplits, Records

VERSION = 1
FACE_FILES = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf",
    "DejaVuSans-BoldOblique.ttf",
    "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf",
    "DejaVuSerif-BoldItalic.ttf",
    "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf",
    "DejaVuSansMono-BoldOblique.ttf",
    "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf",
)
CODE_POINT_RANGES = ((0x0030, 0x0250), (0x0370, 0x0530))  # [start, stop)
SCRIPTS = ("LATIN", "GREEK", "CYRILLIC", "DIGIT")
MERGE_SIZE = 32
SAME_TOLERANCE = 0.02
MERGE_MIN_FACES = 4
SUPERSAMPLE = 2
FONT_SIZE = 0.6    # em size as a fraction of the canvas side
BASELINE = 0.72    # baseline height from the top, fraction of the canvas side
NOISE_STD = 8.0    # additive pixel noise, in 0..255 units


def font_dir():
    """Folder of matplotlib's bundled TrueType fonts (``mpl-data/fonts/ttf``)."""
    import matplotlib

    return os.path.join(matplotlib.get_data_path(), "fonts", "ttf")


def face_paths():
    """The 16 face files (absolute paths); a clear error when matplotlib lacks one."""
    folder = font_dir()
    paths = tuple(os.path.join(folder, name) for name in FACE_FILES)
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(
            f"glyphs: matplotlib's font folder {folder} lacks {', '.join(missing)}; "
            "reinstall matplotlib (>= 3.8 ships DejaVu and STIX General)"
        )
    return paths


def _is_candidate(code_point):
    char = chr(code_point)
    if unicodedata.category(char) not in ("Lu", "Ll", "Nd"):
        return False
    return unicodedata.name(char, "").startswith(SCRIPTS)


def candidate_characters(paths=None):
    """int [N]: sorted code points of Latin/Greek/Cyrillic letters and digits in every face."""
    from matplotlib.ft2font import FT2Font

    paths = face_paths() if paths is None else paths
    charmaps = [set(FT2Font(path).get_charmap()) for path in paths]
    code_points = [
        cp for start, stop in CODE_POINT_RANGES for cp in range(start, stop)
        if _is_candidate(cp) and all(cp in charmap for charmap in charmaps)
    ]
    return np.asarray(code_points, dtype=np.int64)


def _fonts(paths, canvas):
    from PIL import ImageFont

    return [ImageFont.truetype(path, int(round(FONT_SIZE * canvas))) for path in paths]


def _draw(code_point, font, canvas):
    """The glyph on a black ``canvas x canvas`` PIL image: fixed baseline, ink centered in x."""
    from PIL import Image, ImageDraw

    image = Image.new("L", (canvas, canvas), 0)
    char = chr(int(code_point))
    left, _, right, _ = font.getbbox(char, anchor="ls")
    ImageDraw.Draw(image).text((canvas / 2 - (left + right) / 2, BASELINE * canvas), char,
                               font=font, fill=255, anchor="ls")
    return image


def render_canonical(code_points, size=MERGE_SIZE, paths=None):
    """Un-jittered renderings: float32 [N, F, size, size] in [0, 1] (F faces)."""
    from PIL import Image

    paths = face_paths() if paths is None else paths
    canvas = size * SUPERSAMPLE
    fonts = _fonts(paths, canvas)
    out = np.empty((len(code_points), len(fonts), size, size), np.float32)
    for i, code_point in enumerate(code_points):
        for f, font in enumerate(fonts):
            image = _draw(code_point, font, canvas).resize((size, size), Image.BOX)
            out[i, f] = np.asarray(image, np.float32) / 255.0
    return out


def face_distances(canonical):
    """Per face, the L1 distance of two renderings over the smaller one's ink (all pairs).

    Args:
      canonical: float [N, F, H, W] renderings in [0, 1].
    Returns:
      float32 [F, N, N], symmetric, zero diagonal.
    """
    from scipy.spatial.distance import cdist

    flat, ink = flat_and_ink(canonical)
    out = np.empty((flat.shape[1], flat.shape[0], flat.shape[0]), np.float32)
    for f in range(flat.shape[1]):
        l1 = cdist(flat[:, f], flat[:, f], metric="cityblock")
        out[f] = l1 / np.minimum(ink[:, None, f], ink[None, :, f])
    return out


def flat_and_ink(canonical):
    """float64 renderings flattened to [N, F, H*W] and their ink [N, F] (floored at 1e-6)."""
    canonical = np.asarray(canonical, np.float64)
    flat = canonical.reshape(canonical.shape[0], canonical.shape[1], -1)  # [N, F, H*W]
    return flat, np.maximum(flat.sum(-1), 1e-6)  # ink [N, F]


def same_face_counts(canonical, tolerance=SAME_TOLERANCE):
    """int [N, N]: in how many faces two characters' renderings are the same shape.

    Same as ``(face_distances(canonical) <= tolerance).sum(0)`` but fast: since
    ``L1(a - b) >= |ink(a) - ink(b)|``, only pairs whose ink differs by at most ``tolerance`` of
    the smaller ink can be the same, and only those are compared.

    Args:
      canonical: float [N, F, H, W] renderings in [0, 1].
    """
    flat, ink = flat_and_ink(canonical)
    num, faces = ink.shape
    counts = np.zeros((num, num), np.int64)
    for f in range(faces):
        order = np.argsort(ink[:, f], kind="stable")
        sorted_ink = ink[order, f]
        # sorted ascending: the smaller ink of (i, j > i) is sorted_ink[i]
        stops = np.searchsorted(sorted_ink, sorted_ink * (1.0 + tolerance), side="right")
        for i in range(num):
            js = order[i + 1:stops[i]]
            if js.size == 0:
                continue
            a = order[i]
            l1 = np.abs(flat[js, f] - flat[a, f]).sum(-1)
            same = js[l1 <= tolerance * np.minimum(ink[a, f], ink[js, f])]
            counts[a, same] += 1
            counts[same, a] += 1
    np.fill_diagonal(counts, faces)
    return counts


def merge_groups(same_counts, min_faces=MERGE_MIN_FACES):
    """The merge rule: groups of character indices that are the same shape.

    Args:
      same_counts: int [N, N] from :func:`same_face_counts` (faces in which two characters are
        the same shape).
      min_faces: merge two characters when they are the same in at least this many faces.
    Returns:
      list of sorted int tuples partitioning range(N) (transitive closure), sorted by first index.
    """
    same_counts = np.asarray(same_counts)
    num = same_counts.shape[0]
    parent = list(range(num))

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in zip(*np.nonzero(np.triu(same_counts >= min_faces, k=1))):
        ri, rj = root(int(i)), root(int(j))
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    groups = {}
    for i in range(num):
        groups.setdefault(root(i), []).append(i)
    return sorted((tuple(g) for g in groups.values()), key=lambda g: g[0])


@dataclasses.dataclass(frozen=True)
class GlyphClass:
    """One class: its id, the rendered representative and every merged member (code points)."""

    label: int
    representative: int
    members: tuple

    @property
    def characters(self):
        return "".join(chr(cp) for cp in self.members)


def character_groups(paths=None):
    """The merge rule applied to every candidate: list of code-point tuples (sorted, disjoint)."""
    code_points = candidate_characters(paths)
    groups = merge_groups(same_face_counts(render_canonical(code_points, MERGE_SIZE, paths)))
    return [tuple(int(code_points[i]) for i in group) for group in groups]


def label_classes(groups, split_seed=0):
    """Class ids for merged groups: a permutation drawn from `split_seed`.

    Args:
      groups: list of code-point tuples sorted by their first (lowest) code point.
    Returns:
      list of GlyphClass sorted by label; labels < len // 2 are the training classes.
    """
    order = np.random.default_rng(split_seed).permutation(len(groups))
    table = [GlyphClass(label=int(order[rank]), representative=int(group[0]),
                        members=tuple(int(cp) for cp in group))
             for rank, group in enumerate(groups)]
    return sorted(table, key=lambda c: c.label)


def class_table(split_seed=0, paths=None):
    """The classes after the merge rule, with their ids (the zero-shot split's permutation)."""
    return label_classes(character_groups(paths), split_seed)


def _jitter(image, rng, canvas):
    """Seeded affine + stroke-weight jitter of a supersampled glyph image (PIL 'L')."""
    from PIL import Image, ImageChops, ImageFilter

    scale = rng.uniform(0.85, 1.1)
    aspect = rng.uniform(0.92, 1.08)
    angle = np.deg2rad(rng.uniform(-8.0, 8.0))
    shear = rng.uniform(-0.12, 0.12)
    shift = rng.uniform(-0.06, 0.06, size=2) * canvas
    stroke = rng.integers(3)  # 0: unchanged, 1: dilate, 2: half an erosion (thin serifs survive)
    cos, sin = np.cos(angle), np.sin(angle)
    # forward map (output = A @ input + b) about the canvas center, then its inverse for PIL
    forward = np.array([[cos, -sin], [sin, cos]]) @ np.array([[1.0, shear], [0.0, 1.0]]) \
        @ np.diag([scale * aspect, scale / aspect])
    inverse = np.linalg.inv(forward)
    center = np.array([canvas / 2.0, canvas / 2.0])
    offset = center - inverse @ (center + shift)
    coeffs = (inverse[0, 0], inverse[0, 1], offset[0], inverse[1, 0], inverse[1, 1], offset[1])
    image = image.transform((canvas, canvas), Image.AFFINE, coeffs, resample=Image.BILINEAR)
    if stroke == 1:
        image = image.filter(ImageFilter.MaxFilter(3))
    elif stroke == 2:
        image = ImageChops.blend(image, image.filter(ImageFilter.MinFilter(3)), 0.5)
    return image


def render_samples(table, image_size=32, samples_per_face=1, seed=0, paths=None):
    """Jittered images of every class in every face.

    Args:
      table: list of GlyphClass (:func:`class_table`).
      image_size: output side in pixels.
      samples_per_face: images per class and face.
      seed: jitter seed; image (class c, face f, sample s) uses
        ``default_rng([seed, representative, f, s])``, so it does not depend on the other classes.
    Returns:
      (images uint8 [N, image_size, image_size], labels int64 [N]), N = C * F * samples_per_face,
      ordered by class label, then face, then sample.
    """
    from PIL import Image

    paths = face_paths() if paths is None else paths
    canvas = int(image_size) * SUPERSAMPLE
    fonts = _fonts(paths, canvas)
    total = len(table) * len(fonts) * samples_per_face
    images = np.empty((total, image_size, image_size), np.uint8)
    labels = np.empty((total,), np.int64)
    n = 0
    for cls in table:
        for f, font in enumerate(fonts):
            base = _draw(cls.representative, font, canvas)
            for s in range(samples_per_face):
                rng = np.random.default_rng([seed, cls.representative, f, s])
                image = _jitter(base, rng, canvas).resize((image_size, image_size), Image.BOX)
                pixels = np.asarray(image, np.float32)
                pixels += rng.normal(0.0, NOISE_STD, size=pixels.shape)
                images[n] = np.clip(np.round(pixels), 0, 255).astype(np.uint8)
                labels[n] = cls.label
                n += 1
    return images, labels


def cache_root():
    """``$CCP_CACHE_DIR`` or ``~/.cache/ccp``: the folder of every rendered / pretrained cache."""
    return os.environ.get("CCP_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "ccp")


def default_cache_dir():
    return os.path.join(cache_root(), "glyphs")


def rasterizer_fingerprint(paths):
    """What a rendering depends on besides its parameters: this module's VERSION, the font
    files (names and sizes), Pillow's and FreeType's versions (a JSON-able dict)."""
    import PIL
    from PIL import features

    return {"version": VERSION,
            "fonts": [(os.path.basename(p), os.path.getsize(p)) for p in paths],
            "pillow": PIL.__version__, "freetype": features.version("freetype2")}


def digest(payload):
    """16 hex digits of the SHA-256 of a JSON-able payload (a cache file name)."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def cache_key(image_size, samples_per_face, seed, split_seed, paths=None):
    """Hex digest naming the cached rendering of these parameters (fonts and rasterizer too)."""
    paths = face_paths() if paths is None else paths
    return digest({**rasterizer_fingerprint(paths), "image_size": int(image_size),
                   "samples_per_face": int(samples_per_face), "seed": int(seed),
                   "split_seed": int(split_seed)})


def atomic_write(path, write):
    """``write(tmp)`` then an atomic rename to ``path`` (creates the folder)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    write(tmp)
    os.replace(tmp, path)  # atomic: concurrent loaders never see half a file


def cached_class_table(split_seed=0, cache_dir=None):
    """:func:`class_table`, cached as JSON next to the renderings (it is the slow part)."""
    cache_dir = default_cache_dir() if cache_dir is None else cache_dir
    key = digest({**rasterizer_fingerprint(face_paths()), "split_seed": int(split_seed),
                   "merge": [MERGE_SIZE, SAME_TOLERANCE, MERGE_MIN_FACES]})
    path = os.path.join(cache_dir, f"classes_{key}.json")
    if os.path.exists(path):
        with open(path) as handle:
            return [GlyphClass(c["label"], c["representative"], tuple(c["members"]))
                    for c in json.load(handle)]
    table = class_table(split_seed)

    def write(tmp):
        with open(tmp, "w") as handle:
            json.dump([dataclasses.asdict(c) for c in table], handle)

    atomic_write(path, write)
    return table


def glyph_images(image_size=32, samples_per_face=1, seed=0, split_seed=0, cache_dir=None):
    """(images uint8 [N, S, S], labels int64 [N], class table) from the cache, rendered on a miss.

    Args: as :func:`load`.
    """
    if int(image_size) != image_size or image_size < 16:
        raise ValueError(f"glyphs: image_size must be an integer >= 16, got {image_size!r}")
    if int(samples_per_face) != samples_per_face or samples_per_face < 1:
        raise ValueError(
            f"glyphs: samples_per_face must be an integer >= 1, got {samples_per_face!r}")
    image_size, samples_per_face = int(image_size), int(samples_per_face)
    cache_dir = default_cache_dir() if cache_dir is None else cache_dir
    table = cached_class_table(split_seed, cache_dir)
    key = cache_key(image_size, samples_per_face, seed, split_seed)
    path = os.path.join(cache_dir, f"glyphs_{key}.npz")
    if os.path.exists(path):
        with np.load(path) as stored:
            return stored["images"], stored["labels"], table
    images, labels = render_samples(table, image_size, samples_per_face, seed)

    def write(tmp):
        with open(tmp, "wb") as handle:
            np.savez(handle, images=images, labels=labels)

    atomic_write(path, write)
    logging.info("glyphs: rendered %d images of %d classes to %s", len(labels), len(table), path)
    return images, labels, table


def load(data_dir=None, image_size=32, samples_per_face=1, seed=0, split_seed=0,
         render_cache_dir=None):
    """The glyphs splits; `data_dir` is not used (the fonts ship with matplotlib).

    Args:
      image_size: side of the rendered images (>= 16).
      samples_per_face: jittered images per class and face (16 faces).
      seed: jitter seed. split_seed: seed of the class-id permutation (the zero-shot split).
      render_cache_dir: folder of the cached renderings; default ``$CCP_CACHE_DIR/glyphs`` or
        ``~/.cache/ccp/glyphs`` (not ``cache_dir``: data_pipelines.load keeps that name for the
        file data sets' image checks).

    Returns:
      DatasetSplits(name="glyphs"): train = class ids < C // 2, test = the others; in-memory
      records with images uint8 [N, image_size, image_size, 3] and labels = class ids (int64).
    """
    if data_dir:
        logging.info("glyphs: data_dir=%s ignored (rendered from matplotlib's fonts)", data_dir)
    gray, labels, table = glyph_images(image_size, samples_per_face, seed, split_seed,
                                       render_cache_dir)
    images = np.repeat(gray[..., None], 3, axis=-1)
    is_train = labels < len(table) // 2
    return DatasetSplits(
        name="glyphs",
        train=Records(labels[is_train], images=images[is_train]),
        test=Records(labels[~is_train], images=images[~is_train]),
    )
