"""SavedModel embedders (SPEC §10).

``export_embedder(model_or_models, export_dir)`` writes a SavedModel whose "serving_default"
signature maps uint8 images ``[N, H, W, 3]`` (any H, W; one size per call) to embeddings:
it applies the evaluation preprocessing itself (resize the shorter side to
``round(S * 256 / 227)`` bilinearly, center crop ``S x S``, SPEC §6), runs each model in
inference mode and L2-normalizes each model's embedding to unit length (what a retrieval user
expects; for unit-norm rows this ranks exactly as the Lipschitz normalization of evaluation
does). A list of fold models exports the concatenation of their unit-norm embeddings (the 512D
ensemble of the MLRC protocol; the concatenation itself is not renormalized, so each block has
norm 1 and the whole row has norm sqrt(number of models)).

Reload anywhere with plain TensorFlow, no ccp import:
``tf.saved_model.load(d).signatures["serving_default"](images=uint8)["embeddings"]``.

CLI: ``python -m ccp.export embed --model DIR --images FOLDER --out emb.npy``.
"""
import argparse
import os
import sys

import numpy as np
import tensorflow as tf

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


def eval_resize_size(image_size):
    """Shorter-side size before the center crop (256 for 227, SPEC §6)."""
    return int(round(image_size * 256 / 227))


def eval_preprocess(images, image_size):
    """uint8 or float ``[N, H, W, 3]`` -> float32 ``[N, S, S, 3]`` in 0..255 (SPEC §6 eval)."""
    images = tf.cast(images, tf.float32)
    shape = tf.shape(images)
    height, width = tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
    scale = tf.cast(eval_resize_size(image_size), tf.float32) / tf.minimum(height, width)
    new_h = tf.maximum(tf.cast(tf.round(height * scale), tf.int32), image_size)
    new_w = tf.maximum(tf.cast(tf.round(width * scale), tf.int32), image_size)
    resized = tf.image.resize(images, tf.stack([new_h, new_w]), method="bilinear")
    top = (new_h - image_size) // 2
    left = (new_w - image_size) // 2
    return tf.image.crop_to_bounding_box(resized, top, left, image_size, image_size)


def _image_size(model):
    shape = model.input_shape
    if shape[1] is None or shape[1] != shape[2]:
        raise ValueError(f"export needs a model with a square static input, got {shape}")
    return int(shape[1])


class _Embedder(tf.Module):
    def __init__(self, models):
        super().__init__(name="embedder")
        self.models = list(models)
        sizes = {_image_size(m) for m in self.models}
        if len(sizes) != 1:
            raise ValueError(f"all models of an ensemble need one input size, got {sorted(sizes)}")
        self.image_size = sizes.pop()
        self.embedding_size = sum(int(m.output_shape[-1]) for m in self.models)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
    def serve(self, images):
        batch = eval_preprocess(images, self.image_size)
        parts = [tf.math.l2_normalize(tf.cast(m(batch, training=False), tf.float32), axis=-1)
                 for m in self.models]
        return {"embeddings": tf.concat(parts, axis=-1)}


def export_embedder(model_or_models, export_dir):
    """Writes the SavedModel embedder; returns ``export_dir``.

    Args:
      model_or_models: one embedding model or a list of them (concatenated, SPEC §6).
      export_dir: folder to write (created; an existing SavedModel there is replaced).
    """
    models = list(model_or_models) if isinstance(model_or_models, (list, tuple)) else [model_or_models]
    if not models:
        raise ValueError("export_embedder needs at least one model")
    module = _Embedder(models)
    tf.saved_model.save(module, export_dir, signatures={"serving_default": module.serve})
    return export_dir


def load_embedder(export_dir):
    """Loads an exported embedder: returns ``f(uint8 images [N, H, W, 3]) -> np [N, D]``."""
    if not os.path.isdir(export_dir):
        raise FileNotFoundError(f"no SavedModel folder at {export_dir!r}")
    serving = tf.saved_model.load(export_dir).signatures["serving_default"]

    def embed(images):
        return serving(images=tf.convert_to_tensor(images, tf.uint8))["embeddings"].numpy()

    return embed


def list_images(folder):
    """Sorted image files (jpg/jpeg/png) below ``folder``."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"image folder {folder!r} does not exist")
    found = sorted(
        os.path.join(root, name)
        for root, _, names in os.walk(folder) for name in names
        if name.lower().endswith(IMAGE_EXTENSIONS)
    )
    if not found:
        raise FileNotFoundError(f"no .jpg/.jpeg/.png images in {folder!r}")
    return found


def _read_image(path):
    try:
        data = tf.io.read_file(path)
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
    except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError) as error:
        raise ValueError(f"cannot decode image {path}: {error.message}") from None
    return image.numpy()


def embed_folder(export_dir, folder):
    """Embeds every image of ``folder`` (one at a time through the signature: sizes differ).

    Returns ``(embeddings float32 [N, D], paths [N])``.
    """
    embed = load_embedder(export_dir)
    paths = list_images(folder)
    rows = [embed(_read_image(path)[None])[0] for path in paths]
    return np.stack(rows).astype(np.float32), paths


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m ccp.export", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    embed = sub.add_parser("embed", help="embed a folder of images with an exported embedder")
    embed.add_argument("--model", required=True, help="SavedModel folder written by export_embedder")
    embed.add_argument("--images", required=True, help="folder of .jpg/.jpeg/.png images")
    embed.add_argument("--out", required=True, help="output .npy file ([N, D] float32)")
    args = parser.parse_args(argv)
    try:
        embeddings, paths = embed_folder(args.model, args.images)
    except (FileNotFoundError, ValueError) as error:
        parser.exit(2, f"error: {error}\n")
    np.save(args.out, embeddings)
    listing = os.path.splitext(args.out)[0] + ".txt"
    with open(listing, "w") as handle:
        handle.write("\n".join(paths) + "\n")
    print(f"wrote {embeddings.shape[0]} x {embeddings.shape[1]} embeddings to {args.out} "
          f"(row order in {listing})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
