"""Cheap checks for corrupt or unreadable image files.

One rule, two places: inside tf.data (:func:`check_encoded`, an assertion whose message names
the file, run just before decoding) and in plain Python (:func:`image_problem`, used by
:func:`find_corrupt_images` / :func:`validate_images` to drop or report files up front).
A file passes when it starts with a JPEG, PNG, GIF or BMP signature, and JPEG/PNG files hold
their end marker (JPEG EOI ``FF D9``, PNG ``IEND``) in their last 64 KiB, which catches empty
files, HTML error pages saved as .jpg and truncated downloads without decoding anything.
"""
import concurrent.futures
import os

import numpy as np
import tensorflow as tf
from absl import logging

TAIL_BYTES = 64 * 1024
SHORT_TAIL_BYTES = 1024
JPEG_SOI = b"\xff\xd8\xff"
JPEG_EOI = b"\xff\xd9"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_END = b"IEND"
GIF_SIGNATURES = (b"GIF87a", b"GIF89a")
BMP_SIGNATURE = b"BM"


def image_problem_from_bytes(head, tail):
    """None if the bytes look like a complete image, else a short reason (str).

    Args:
      head: the first (at least 8) bytes of the file.
      tail: the last min(size, TAIL_BYTES) bytes.
    """
    if not head:
        return "empty file"
    if head.startswith(JPEG_SOI):
        return None if JPEG_EOI in tail else "truncated JPEG (no end-of-image marker)"
    if head.startswith(PNG_SIGNATURE):
        return None if PNG_END in tail else "truncated PNG (no IEND chunk)"
    if head.startswith(GIF_SIGNATURES) or head.startswith(BMP_SIGNATURE):
        return None
    return f"not a JPEG/PNG/GIF/BMP file (starts with {head[:8]!r})"


def image_problem(path):
    """None if the file at `path` looks like a complete image, else a reason (str)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(16)
            size = os.fstat(handle.fileno()).st_size
            # The end marker is nearly always in the last bytes: read 1 KiB first, the full
            # 64 KiB window only when it is not there.
            handle.seek(max(size - SHORT_TAIL_BYTES, 0))
            tail = handle.read()
            problem = image_problem_from_bytes(head, tail)
            if problem is not None and problem.startswith("truncated") and size > len(tail):
                handle.seek(max(size - TAIL_BYTES, 0))
                problem = image_problem_from_bytes(head, handle.read())
    except OSError as error:
        return f"unreadable ({error.strerror or error})"
    return problem


def find_corrupt_images(records, num_threads=16):
    """[(path, reason)] for every file of `records` that fails the check, in record order.

    Reads 16 bytes + the last 1 KiB of each file (64 KiB when the end marker is not in the last
    1 KiB), with `num_threads` threads (I/O bound).
    In-memory records have no files and give [].
    """
    if records.paths is None:
        return []
    with concurrent.futures.ThreadPoolExecutor(max_workers=num_threads) as pool:
        problems = list(pool.map(image_problem, records.paths, chunksize=64))
    return [(p, why) for p, why in zip(records.paths, problems) if why is not None]


def describe(bad, shown=5):
    listing = "\n  ".join(f"{path}: {why}" for path, why in bad[:shown])
    return f"{len(bad)} corrupt or unreadable image file(s), e.g.\n  {listing}"


def validate_images(records, num_threads=16):
    """Raises ValueError naming the corrupt files of `records` (count and the first few)."""
    bad = find_corrupt_images(records, num_threads)
    if bad:
        raise ValueError(describe(bad))


def drop_corrupt(records, where):
    """(kept record positions int [M], number dropped); logs the count and a few names."""
    bad = find_corrupt_images(records)
    if not bad:
        return np.arange(len(records)), 0
    logging.warning("%s: skipping %s", where, describe(bad))
    bad_paths = {path for path, _ in bad}
    keep = np.array([i for i, p in enumerate(records.paths) if p not in bad_paths], dtype=np.int64)
    return keep, len(bad)


def check_encoded(contents, path):
    """In-graph version of the check: an Assert op that fails with the file's path and reason.

    Args:
      contents: string scalar, the file's bytes.
      path: string scalar, its path (only used in the message).
    Returns:
      A list with one op; run it (control dependency) before decoding `contents`.
    """
    length = tf.strings.length(contents)
    head = tf.strings.substr(contents, 0, 8)

    def within(marker, window):
        tail = tf.strings.substr(contents, tf.maximum(length - window, 0), window)
        return tf.size(tf.strings.split(tail, sep=marker)) > 1

    def holds(marker):  # last 1 KiB first: the full window is scanned only when needed
        return tf.cond(within(marker, SHORT_TAIL_BYTES), lambda: tf.constant(True),
                       lambda: within(marker, TAIL_BYTES))

    jpeg = tf.equal(tf.strings.substr(head, 0, 3), JPEG_SOI)
    png = tf.equal(head, PNG_SIGNATURE)
    other = tf.reduce_any(tf.stack([
        tf.equal(tf.strings.substr(head, 0, 6), GIF_SIGNATURES[0]),
        tf.equal(tf.strings.substr(head, 0, 6), GIF_SIGNATURES[1]),
        tf.equal(tf.strings.substr(head, 0, 2), BMP_SIGNATURE),
    ]))
    # tf.cond keeps the end-marker scan to the one format the file claims to be.
    ok = tf.cond(jpeg, lambda: holds(JPEG_EOI),
                 lambda: tf.cond(png, lambda: holds(PNG_END), lambda: other))
    return [tf.debugging.Assert(
        ok,
        ["corrupt or unreadable image file (not a complete JPEG/PNG/GIF/BMP):", path],
        name="check_image_file",
    )]
