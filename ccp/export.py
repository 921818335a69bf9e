"""SavedModel embedders (SPEC §10): export, reload, and a CLI that embeds a folder of images.

``export_embedder(model_or_models, export_dir)`` writes a SavedModel whose "serving_default"
signature maps uint8 RGB images ``[N, H, W, 3]`` (any H, W; all images of one call share
their size) to embeddings ``[N, D]`` under the output key "embeddings". The signature applies
the evaluation preprocessing itself (SPEC §6: resize the shorter side to
``round(S * 256 / 227)`` bilinearly, center crop ``S x S``, float32 0..255; S is the model's
input side) and runs each model in inference mode.

Normalization. By default each model's embedding is L2-normalized to unit length (what a
retrieval user expects, SPEC §10). ``normalization="lipschitz"`` applies the Lipschitz
normalization ``x / max(||x||, 1)`` of SPEC §2 instead, i.e. exactly what ``ccp.metrics``
evaluates; the two agree whenever ``||x|| >= 1`` (the usual case for a trained model).

Ensembles. A list of fold models exports the concatenation of each model's normalized
embedding (the 512D = 4 x 128D ensemble of the MLRC protocol, SPEC §6). The concatenation is not
renormalized by default: every block has norm 1 and a row has norm ``sqrt(number of models)``.
MLRC's tester (pytorch-metric-learning, ``normalize_embeddings=True``) additionally scales the
concatenated row to unit norm; that is a common factor ``1/sqrt(M)`` that changes no ranking,
and ``normalize_concatenation=True`` reproduces it.

The SavedModel also holds ``image_size``, ``embedding_size`` and ``num_models`` (int32
variables) and a second signature "serving_cropped" that takes already preprocessed float32
``[N, S, S, 3]`` crops (what the CLI batches). Reload anywhere with plain TensorFlow, no ccp
import:

    f = tf.saved_model.load(export_dir).signatures["serving_default"]
    embeddings = f(images=tf.constant(uint8_images))["embeddings"]

CLI: ``python -m ccp.export embed --model DIR --images FOLDER --out emb.npy [--batch_size 64]
[--skip_corrupt]`` writes ``[N, D]`` float32 embeddings and ``emb.txt`` with the image paths in
row order. Every image is fully decoded up front: a corrupt one (TF cannot decode it, or a JPEG
decodes only with a libjpeg data warning) is an error naming it, or with ``--skip_corrupt`` it
is reported on stderr and left out.
"""
import argparse
import concurrent.futures
import numbers
import os
import sys

import keras
import numpy as np
import simplejpeg
import tensorflow as tf

from ccp import layers as ccp_layers

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
JPEG_SOI = b"\xff\xd8\xff"
# libjpeg warnings about metadata only (the pixels are right); the same list as
# data_pipelines.images.BENIGN_JPEG_WARNINGS (a test keeps them equal; ccp cannot import it).
BENIGN_JPEG_WARNINGS = ("bad ICC marker", "JFIF revision", "Adobe color transform",
                        "JFIF extension marker")
SHOWN = 5  # bad images named in an error
NORMALIZATIONS = ("l2", "lipschitz")
SERVING_KEY = "serving_default"
CROPPED_KEY = "serving_cropped"
OUTPUT_KEY = "embeddings"


def eval_resize_size(image_size):
    """Shorter side before the eval center crop: ``round(S * 256 / 227)`` (256 for 227)."""
    return int(round(image_size * 256 / 227))


def eval_preprocess(images, image_size):
    """Evaluation preprocessing of SPEC §6 for a batch of same-size images.

    Args:
      images: uint8 (or float 0..255) RGB ``[N, H, W, 3]``, any H, W >= 1.
      image_size: S, the crop side.
    Returns:
      float32 ``[N, S, S, 3]`` in 0..255: the shorter side resized (bilinear, no antialias) to
      ``eval_resize_size(S)``, the longer side by the same factor, then the central ``S x S``
      crop (offsets ``(new - S) // 2``).
    """
    image_size = int(image_size)
    images = tf.cast(images, tf.float32)
    shape = tf.cast(tf.shape(images)[1:3], tf.float32)
    resize_size = eval_resize_size(image_size)
    scale = resize_size / tf.reduce_min(shape)
    new_shape = tf.maximum(tf.cast(tf.round(shape * scale), tf.int32), resize_size)
    resized = tf.image.resize(images, new_shape, method="bilinear")
    top = (new_shape[0] - image_size) // 2
    left = (new_shape[1] - image_size) // 2
    crop = resized[:, top:top + image_size, left:left + image_size, :]
    return tf.ensure_shape(tf.clip_by_value(crop, 0.0, 255.0), [None, image_size, image_size, 3])


def _normalize(x, normalization):
    if normalization == "lipschitz":
        return ccp_layers.lipschitz_l2_normalize(x)
    return tf.math.l2_normalize(x, axis=-1)


def _model_image_size(model):
    shape = tuple(model.input_shape) if isinstance(model, keras.Model) else ()
    if len(shape) != 4 or shape[1] is None or shape[1] != shape[2] or shape[3] != 3:
        raise ValueError(f"export needs keras models with a square static RGB input "
                         f"[N, S, S, 3]; got {type(model).__name__} with input shape {shape}")
    out = tuple(model.output_shape)
    if len(out) != 2 or out[1] is None:
        raise ValueError(f"export needs models with [N, D] outputs, got output shape {out}")
    return int(shape[1])


class _Embedder(tf.Module):
    """The exported object: models + preprocessing + normalization as tf.functions."""

    def __init__(self, models, normalization, normalize_concatenation):
        super().__init__(name="embedder")
        sizes = sorted({_model_image_size(m) for m in models})
        if len(sizes) != 1:
            raise ValueError(f"all models of an ensemble need the same input size, got {sizes}")
        size = sizes[0]
        self.models = list(models)
        self._size = size
        self._normalization = normalization
        self._normalize_concatenation = normalize_concatenation
        self.image_size = tf.Variable(size, trainable=False, dtype=tf.int32, name="image_size")
        self.embedding_size = tf.Variable(sum(int(m.output_shape[-1]) for m in models),
                                          trainable=False, dtype=tf.int32, name="embedding_size")
        self.num_models = tf.Variable(len(models), trainable=False, dtype=tf.int32,
                                      name="num_models")
        self.serve = tf.function(
            self._serve,
            input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
        self.serve_cropped = tf.function(
            self._embed,
            input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32, name="images")])

    def _embed(self, images):
        parts = [_normalize(tf.cast(m(images, training=False), tf.float32), self._normalization)
                 for m in self.models]
        embeddings = tf.concat(parts, axis=-1) if len(parts) > 1 else parts[0]
        if self._normalize_concatenation:
            embeddings = tf.math.l2_normalize(embeddings, axis=-1)
        return {OUTPUT_KEY: embeddings}

    def _serve(self, images):
        return self._embed(eval_preprocess(images, self._size))


def export_embedder(model_or_models, export_dir, normalization="l2",
                    normalize_concatenation=False):
    """Writes a SavedModel embedder (see the module docstring); returns ``export_dir``.

    Args:
      model_or_models: an embedding model (RGB float ``[N, S, S, 3]`` 0..255 -> raw ``[N, d]``)
        or a list of them with one S (their normalized embeddings are concatenated: D = sum d).
      export_dir: folder to write (created; files of an earlier export there are replaced).
      normalization: "l2" (unit length, default) or "lipschitz" (``x / max(||x||, 1)``),
        applied to each model's embedding.
      normalize_concatenation: also scale each concatenated row to unit norm (MLRC's tester).
    Returns:
      ``export_dir``. Its "serving_default" signature: uint8 ``images [N, H, W, 3]`` ->
      ``{"embeddings": float32 [N, D]}``.
    """
    if isinstance(model_or_models, (list, tuple)):
        models = list(model_or_models)
    else:
        models = [model_or_models]
    if not models:
        raise ValueError("export_embedder needs at least one model")
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    module = _Embedder(models, normalization, bool(normalize_concatenation))
    export_dir = os.fspath(export_dir)
    signatures = {SERVING_KEY: module.serve.get_concrete_function(),
                  CROPPED_KEY: module.serve_cropped.get_concrete_function()}
    tf.saved_model.save(module, export_dir, signatures=signatures)
    return export_dir


class LoadedEmbedder:
    """An exported embedder, reloaded: call it on uint8 images ``[N, H, W, 3]``.

    Attributes:
      image_size: S, the crop side of the evaluation preprocessing.
      embedding_size: D.
      num_models: how many models are concatenated.
    """

    def __init__(self, export_dir):
        export_dir = os.fspath(export_dir)
        if not os.path.isfile(os.path.join(export_dir, "saved_model.pb")):
            raise FileNotFoundError(f"no SavedModel at {export_dir!r} (expected the folder "
                                    "written by ccp.export.export_embedder)")
        self._loaded = tf.saved_model.load(export_dir)
        if SERVING_KEY not in self._loaded.signatures:
            raise ValueError(f"the SavedModel at {export_dir!r} has no {SERVING_KEY!r} signature")
        self._serve = self._loaded.signatures[SERVING_KEY]
        self._cropped = self._loaded.signatures.get(CROPPED_KEY)
        self.image_size = int(self._loaded.image_size.numpy())
        self.embedding_size = int(self._loaded.embedding_size.numpy())
        self.num_models = int(self._loaded.num_models.numpy())

    def __call__(self, images):
        """uint8 ``[N, H, W, 3]`` -> float32 numpy ``[N, D]``."""
        images = np.asarray(images)
        if images.dtype != np.uint8:
            raise TypeError(f"expected uint8 images (0..255), got dtype {images.dtype}")
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected images [N, H, W, 3], got shape {images.shape}")
        return self._serve(images=tf.constant(images))[OUTPUT_KEY].numpy()

    def embed_cropped(self, crops):
        """Preprocessed float32 crops ``[N, S, S, 3]`` (0..255) -> float32 numpy ``[N, D]``."""
        crops = tf.convert_to_tensor(crops, tf.float32)
        if crops.shape.rank != 4 or tuple(crops.shape[1:]) != (self.image_size,) * 2 + (3,):
            raise ValueError(f"expected crops [N, {self.image_size}, {self.image_size}, 3], got "
                             f"shape {tuple(crops.shape)}")
        return self._cropped(images=crops)[OUTPUT_KEY].numpy()


def load_embedder(export_dir):
    """Reloads an exported embedder: ``f(uint8 images [N, H, W, 3]) -> np.float32 [N, D]``.

    The returned :class:`LoadedEmbedder` also has ``image_size``, ``embedding_size`` and
    ``embed_cropped``.
    """
    return LoadedEmbedder(export_dir)


def list_images(folder):
    """Sorted paths of the .jpg/.jpeg/.png files below ``folder`` (recursive)."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"image folder {folder!r} does not exist")
    found = sorted(
        os.path.join(root, name)
        for root, _, names in os.walk(folder) for name in names
        if name.lower().endswith(IMAGE_EXTENSIONS)
    )
    if not found:
        others = other_files(folder)
        seen = (f" (it holds {len(others)} other file(s), e.g. "
                f"{', '.join(os.path.basename(p) for p in others[:SHOWN])})" if others else "")
        raise FileNotFoundError(f"no .jpg/.jpeg/.png images in {folder!r}{seen}")
    return found


def other_files(folder):
    """Sorted paths of the files below ``folder`` that :func:`list_images` leaves out (not
    .jpg/.jpeg/.png, e.g. .webp or .txt)."""
    return sorted(
        os.path.join(root, name)
        for root, _, names in os.walk(os.fspath(folder)) for name in names
        if not name.lower().endswith(IMAGE_EXTENSIONS)
    )


def read_image(path):
    """Decodes an image file to uint8 RGB ``[H, W, 3]``; ValueError naming an unreadable file."""
    try:
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, dtype=tf.uint8,
                                   expand_animations=False)
    except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError) as error:
        raise ValueError(f"cannot read image {path}: {error.message}") from None
    return image


def _jpeg_warning(data):
    """The libjpeg warning a JPEG decodes with (damage TF decodes past silently), else None."""
    try:
        simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True)
        return None
    except ValueError as error:
        warning = str(error)
    try:
        simplejpeg.decode_jpeg(data, colorspace="RGB", strict=False)
    except ValueError:
        return None  # not a warning but a fatal error: the TF decode reports it
    return None if any(b in warning for b in BENIGN_JPEG_WARNINGS) else warning


def image_problem(path):
    """None if the file decodes cleanly, else why (str).

    Cleanly: TensorFlow decodes it (the decoder embedding uses), and a JPEG decodes without a
    libjpeg data warning such as "Corrupt JPEG data: N extraneous bytes" (damage in the middle
    of the file, which TF decodes past silently). Reads and decodes the whole file.
    """
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as error:
        return f"unreadable ({error.strerror or error})"
    if data.startswith(JPEG_SOI):
        warning = _jpeg_warning(data)
        if warning is not None:
            return f"corrupt JPEG ({warning})"
    try:
        tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)
    except tf.errors.InvalidArgumentError as error:
        return f"cannot decode ({error.message.splitlines()[0]})"
    return None


def checked_images(folder, skip_corrupt=False, num_threads=8):
    """The images below ``folder``, each fully decoded once first (``num_threads`` threads).

    Returns:
      ``(paths, bad)``: the sorted paths that decode cleanly, and ``[(path, reason)]`` of the
      others (only when ``skip_corrupt``).
    Raises:
      ValueError: bad images and not ``skip_corrupt`` (names the first few and the count), or
        no image decodes.
    """
    paths = list_images(folder)
    with concurrent.futures.ThreadPoolExecutor(max_workers=num_threads) as pool:
        problems = list(pool.map(image_problem, paths))
    bad = [(p, why) for p, why in zip(paths, problems) if why is not None]
    if bad and (not skip_corrupt or len(bad) == len(paths)):
        listing = "".join(f"\n  {p}: {why}" for p, why in bad[:SHOWN])
        more = f"\n  ... and {len(bad) - SHOWN} more" if len(bad) > SHOWN else ""
        hint = ("no image left to embed" if skip_corrupt
                else "pass --skip_corrupt (skip_corrupt=True) to embed the others")
        raise ValueError(f"{len(bad)} of {len(paths)} images in {folder!r} are corrupt or "
                         f"unreadable:{listing}{more}\n{hint}")
    return [p for p, why in zip(paths, problems) if why is None], bad


def embed_files(embedder, paths, batch_size=64):
    """Embeds image files with an exported embedder: float32 ``[N, D]``, rows in ``paths`` order.

    ``embedder`` is a :class:`LoadedEmbedder` or its export folder. Each image is decoded and
    preprocessed on its own (sizes differ), then the crops run through the model in batches of
    ``batch_size`` ("serving_cropped"; the same computation as "serving_default"). A file that
    does not decode is a ValueError naming it.
    """
    _check_positive_int(batch_size, "batch_size")
    if not isinstance(embedder, LoadedEmbedder):
        embedder = load_embedder(embedder)
    rows, crops = [], []
    for index, path in enumerate(paths):
        crops.append(eval_preprocess(read_image(path)[None], embedder.image_size)[0])
        if len(crops) == batch_size or index == len(paths) - 1:
            rows.append(embedder.embed_cropped(tf.stack(crops)))
            crops = []
    return np.concatenate(rows).astype(np.float32)


def embed_folder(export_dir, folder, batch_size=64, skip_corrupt=False):
    """Embeds every image below ``folder`` with an exported embedder.

    Every file is checked first (:func:`checked_images`): a bad one is an error naming it, or
    with ``skip_corrupt`` it is left out.

    Returns:
      ``(embeddings float32 [N, D], paths [N])``, rows in sorted path order.
    """
    _check_positive_int(batch_size, "batch_size")
    embedder = load_embedder(export_dir)
    paths, _ = checked_images(folder, skip_corrupt)
    return embed_files(embedder, paths, batch_size), paths


def _check_positive_int(value, what):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{what} must be a positive int, got {value!r}")


def main(argv=None):
    """``python -m ccp.export embed --model DIR --images FOLDER --out emb.npy``."""
    parser = argparse.ArgumentParser(prog="python -m ccp.export",
                                     description="Embed images with an exported ccp embedder.")
    sub = parser.add_subparsers(dest="command", required=True)
    embed = sub.add_parser("embed", help="embed a folder of images (recursively, sorted)")
    embed.add_argument("--model", required=True, help="SavedModel folder from export_embedder")
    embed.add_argument("--images", required=True, help="folder of .jpg/.jpeg/.png images")
    embed.add_argument("--out", required=True,
                       help="output .npy ([N, D] float32); the paths go to the same name .txt")
    embed.add_argument("--batch_size", type=int, default=64, help="images per model call")
    embed.add_argument("--skip_corrupt", action="store_true",
                       help="leave out images that do not decode cleanly (each is reported on "
                            "stderr) instead of stopping with an error naming them")
    args = parser.parse_args(argv)
    out = args.out if args.out.endswith(".npy") else args.out + ".npy"
    try:
        _check_positive_int(args.batch_size, "batch_size")
        embedder = load_embedder(args.model)
        paths, bad = checked_images(args.images, args.skip_corrupt)
        for path, why in bad:
            print(f"skipped corrupt image {path}: {why}", file=sys.stderr)
        unsupported = other_files(args.images)
        if unsupported:
            print(f"skipped {len(unsupported)} file(s) that are not .jpg/.jpeg/.png, e.g. "
                  f"{', '.join(unsupported[:SHOWN])}", file=sys.stderr)
        embeddings = embed_files(embedder, paths, args.batch_size)
    except (FileNotFoundError, ValueError, TypeError) as error:
        parser.exit(2, f"error: {error}\n")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    np.save(out, embeddings)
    listing = out[: -len(".npy")] + ".txt"
    with open(listing, "w") as handle:
        handle.write("".join(f"{path}\n" for path in paths))
    skipped = f"; skipped {len(bad)} corrupt image(s) listed above" if bad else ""
    if unsupported:
        skipped += f"; skipped {len(unsupported)} file(s) that are not .jpg/.jpeg/.png"
    print(f"wrote {embeddings.shape[0]} x {embeddings.shape[1]} embeddings to {out} "
          f"(row order in {listing}){skipped}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
