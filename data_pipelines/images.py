"""The up-front image check: every file fully and strictly decoded once, bad files named.

:func:`check_images` decodes every image of every split before anything trains (threaded,
results cached on disk per file path + size + mtime, so a rerun only stats the files). A file
is bad when it is not a JPEG/PNG/GIF/BMP file or does not decode cleanly:

* JPEG: libjpeg-turbo through ``simplejpeg`` with ``strict=True``, so the recoverable libjpeg
  warnings that TensorFlow and PIL decode past silently (``Corrupt JPEG data: N extraneous
  bytes before marker``, ``premature end of data segment``: damage in the middle of the file)
  are errors, as are broken headers (``jpeg::Uncompress failed`` in TF). Warnings about
  metadata only (a bad ICC profile, an unknown JFIF revision or Adobe transform) are not.
  A file TurboJPEG cannot open at all is judged by plain libjpeg through PIL.
* PNG: PIL ``verify()`` (chunk CRCs up to IEND) and a full ``load()``; GIF/BMP: ``load()``;
  then TensorFlow's decoder too (PIL reads variants it does not, e.g. 1-bit BMP).

By default a bad file is an error (:class:`CorruptImageError` naming the first files, the
count, and the flag ``--skip_corrupt``); with ``skip_corrupt=True`` bad files are dropped with
one warning naming the count and the file the full list was written to.

The disk cache is one small JSON file per data set folder in ``cache_dir``; by default
``$XDG_CACHE_HOME/ccp/image_checks`` (``~/.cache/ccp/image_checks``). Delete it to recheck
everything; an entry is reused only while the file's size and mtime are unchanged.

:func:`check_encoded` is the cheap in-graph guard (signature + end marker, the path in its
message) for files damaged after the up-front check.
"""
import concurrent.futures
import hashlib
import io
import json
import os
import tempfile

import numpy as np
import simplejpeg
import tensorflow as tf
from absl import logging
from PIL import Image

from data_pipelines import records as records_lib

TAIL_BYTES = 64 * 1024
SHORT_TAIL_BYTES = 1024
JPEG_SOI = b"\xff\xd8\xff"
JPEG_EOI = b"\xff\xd9"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_END = b"IEND"
GIF_SIGNATURES = (b"GIF87a", b"GIF89a")
BMP_SIGNATURE = b"BM"
# libjpeg warnings about metadata only: the pixels decode correctly.
BENIGN_JPEG_WARNINGS = ("bad ICC marker", "JFIF revision", "Adobe color transform",
                        "JFIF extension marker")
CACHE_VERSION = 1  # bump when the rule of decode_problem changes: old entries are ignored
SHOWN = 5  # bad files named in a message
STAT_CHUNK = 1024  # files stat-ed per thread task (one task per file costs more than a stat)

# path -> [size, mtime_ns] of the files that decoded cleanly in this process: any Records
# cut from checked ones (folds, subsets) is known clean after one stat per file.
_VERIFIED = {}


class CorruptImageError(ValueError):
    """Image files that do not decode cleanly (the message names them and their count)."""


def image_kind(head):
    """The format ("jpeg", "png", "gif" or "bmp") of a file from its first 8 bytes, else None."""
    if head.startswith(JPEG_SOI):
        return "jpeg"
    if head.startswith(PNG_SIGNATURE):
        return "png"
    if head.startswith(GIF_SIGNATURES):
        return "gif"
    if head.startswith(BMP_SIGNATURE):
        return "bmp"
    return None


def _jpeg_problem(data):
    """None if libjpeg decodes `data` without error or data warning, else the reason."""
    try:
        simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True)
        return None
    except ValueError as error:
        strict_error = str(error)
    try:  # decodes leniently: the strict failure was a libjpeg warning
        simplejpeg.decode_jpeg(data, colorspace="RGB", strict=False)
    except ValueError:
        # A fatal error (broken header or tables), or a layout TurboJPEG's API cannot name
        # (an unusual chroma sampling): plain libjpeg through PIL decides.
        pil_error = _pil_error(data, "jpeg")
        return None if pil_error is None else f"undecodable JPEG ({pil_error})"
    if any(benign in strict_error for benign in BENIGN_JPEG_WARNINGS):
        return None
    return f"corrupt JPEG ({strict_error})"


def _pil_error(data, kind):
    """None if PIL decodes `data` completely (PNG: CRCs verified too), else the error."""
    try:
        if kind == "png":
            with Image.open(io.BytesIO(data)) as image:
                image.verify()
        with Image.open(io.BytesIO(data)) as image:
            image.load()
    except Exception as error:  # PIL raises OSError, SyntaxError, ValueError, zlib.error...
        return f"{type(error).__name__}: {error}"
    return None


def decode_problem(path):
    """None if the file at `path` is a JPEG/PNG/GIF/BMP image that decodes cleanly, else why.

    Reads and fully decodes the file (about 2-5 ms for a 500 x 500 JPEG).
    """
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as error:
        return f"unreadable ({error.strerror or error})"
    if not data:
        return "empty file"
    kind = image_kind(data[:16])
    if kind is None:
        return f"not a JPEG/PNG/GIF/BMP file (starts with {data[:8]!r})"
    if kind == "jpeg":
        return _jpeg_problem(data)
    error = _pil_error(data, kind)
    if error is not None:
        return f"corrupt {kind.upper()} ({error})"
    try:  # PIL reads some variants the pipeline's decoder does not (a 1-bit BMP)
        tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)
    except tf.errors.InvalidArgumentError as tf_error:
        return f"{kind.upper()} that TensorFlow cannot decode ({tf_error.message.splitlines()[0]})"
    return None


def default_cache_dir():
    """``$XDG_CACHE_HOME/ccp/image_checks``, or ``~/.cache/ccp/image_checks``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "ccp", "image_checks")


def _cache_files(cache_dir, paths):
    """(cache JSON path, default report path) for the folder holding `paths`."""
    root = os.path.commonpath([os.path.abspath(d) for d in {os.path.dirname(p) for p in paths}])
    key = hashlib.sha1(root.encode("utf-8")).hexdigest()[:12]
    name = os.path.basename(root.rstrip(os.sep)) or "root"
    stem = os.path.join(cache_dir, f"{name}-{key}")
    return stem + ".json", stem + ".corrupt.txt"


def _stat_key(path):
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return [stat.st_size, stat.st_mtime_ns]


def _stat_keys(paths):
    return [_stat_key(p) for p in paths]


def _read_cache(cache_file):
    """{path: [size, mtime_ns, reason or None]} from `cache_file` ({} if absent or stale)."""
    try:
        with open(cache_file, encoding="utf-8") as handle:
            content = json.load(handle)
    except (OSError, ValueError):
        return {}
    if not isinstance(content, dict) or content.get("version") != CACHE_VERSION:
        return {}
    entries = content.get("entries")
    return entries if isinstance(entries, dict) else {}


def _write_atomic(path, text):
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def default_num_threads():
    """Twice the CPU count (decoding releases the GIL; file reads wait on I/O), at most 32."""
    return min(32, 2 * (os.cpu_count() or 1))


def scan(paths, num_threads=None, cache_dir=None):
    """[(path, reason)] of the bad files among `paths` (order kept), each decoded at most once.

    Args:
      paths: image file paths (str).
      num_threads: decoding threads; None for :func:`default_num_threads`.
      cache_dir: folder of the result cache; None for :func:`default_cache_dir`, "" for none.
        Files whose size and mtime match their cache entry are not decoded again.
    """
    paths = [str(p) for p in paths]
    unique = list(dict.fromkeys(paths))
    if cache_dir is None:
        cache_dir = default_cache_dir()
    cache_file = _cache_files(cache_dir, unique)[0] if cache_dir and unique else None
    cached = _read_cache(cache_file) if cache_file else {}
    threads = num_threads or default_num_threads()
    with concurrent.futures.ThreadPoolExecutor(max_workers=threads) as pool:
        chunks = [unique[i:i + STAT_CHUNK] for i in range(0, len(unique), STAT_CHUNK)]
        keys = [k for chunk in pool.map(_stat_keys, chunks) for k in chunk]
        stale = [p for p, k in zip(unique, keys)
                 if k is None or (_VERIFIED.get(p) != k and cached.get(p, [None, None])[:2] != k)]
        fresh = dict(zip(stale, pool.map(decode_problem, stale)))
    reasons = {}
    for path, key in zip(unique, keys):
        if path in fresh:
            reasons[path] = fresh[path]
        else:
            reasons[path] = None if _VERIFIED.get(path) == key else cached[path][2]
        if key is not None:
            cached[path] = key + [reasons[path]]
            if reasons[path] is None:
                _VERIFIED[path] = key
    if cache_file and stale:
        try:
            _write_atomic(cache_file, json.dumps({"version": CACHE_VERSION, "entries": cached}))
        except OSError as error:
            logging.warning("image check: cannot write the cache %s (%s); the next run "
                            "decodes every image again", cache_file, error.strerror or error)
    return [(p, reasons[p]) for p in paths if reasons[p] is not None]


def describe(bad, shown=SHOWN):
    """'N corrupt or unreadable image file(s), e.g.' + the first `shown` as 'path: reason'."""
    listing = "\n  ".join(f"{path}: {why}" for path, why in bad[:shown])
    more = f"\n  ... and {len(bad) - shown} more" if len(bad) > shown else ""
    return f"{len(bad)} corrupt or unreadable image file(s), e.g.\n  {listing}{more}"


def find_corrupt_images(records, num_threads=None, cache_dir=""):
    """[(path, reason)] for every bad file of `records`, in record order (full decode).

    In-memory records give []. Files that decoded cleanly earlier in this process (e.g. in
    :func:`check_images` of the loader) and kept their size and mtime are not decoded again.
    No disk cache unless `cache_dir`.
    """
    if records.paths is None:
        return []
    return scan(records.paths, num_threads, cache_dir)


def _write_report(bad, report_path):
    """Writes 'path<TAB>reason' lines; returns the path, or None when it cannot be written."""
    try:
        _write_atomic(report_path, "".join(f"{p}\t{why}\n" for p, why in bad))
    except OSError as error:
        logging.warning("image check: cannot write %s (%s)", report_path,
                        error.strerror or error)
        return None
    return report_path


def _without(records, bad_paths):
    """`records` minus the files in `bad_paths` (the same object when none is there)."""
    if records is None or records.paths is None:
        return records
    keep = np.array([i for i, p in enumerate(records.paths) if p not in bad_paths],
                    dtype=np.int64)
    return records if keep.size == len(records) else records.select(keep)


def _emptied_classes(parts, kept):
    """{split name: class ids that lose every image} between `parts` and `kept`."""
    emptied = {}
    for name, records in parts.items():
        if records is not None:
            lost = np.setdiff1d(records.classes, kept[name].classes)
            if lost.size:
                emptied[name] = lost
    return emptied


def check_images(data, skip_corrupt=False, allow_partial=False, cache_dir=None,
                 report_path=None, num_threads=None, name="images"):
    """Fully decodes every image file of `data` once; returns `data` without the bad files.

    Args:
      data: a DatasetSplits (train, test, query, gallery checked together) or a Records.
      skip_corrupt: False raises on any bad file; True drops them with one warning.
      allow_partial: with `skip_corrupt`, also accept that a class loses all its images.
      cache_dir: see :func:`scan` (None: :func:`default_cache_dir`; "": no disk cache).
      report_path: where the full 'path<TAB>reason' list of bad files goes; None: next to
        the cache file (not written when there is no cache and no report_path).
      num_threads: decoding threads (None: :func:`default_num_threads`).
      name: the data set's name, for messages.
    Returns:
      The same type as `data`, every Records holding only files that decode cleanly.
    Raises:
      CorruptImageError: bad files and not `skip_corrupt`, or skipping them would empty a
        class and not `allow_partial`.
    """
    splits = data if isinstance(data, records_lib.DatasetSplits) else None
    parts = ({"train": splits.train, "test": splits.test, "query": splits.query,
              "gallery": splits.gallery} if splits else {"records": data})
    paths = [p for r in parts.values() if r is not None and r.paths is not None
             for p in r.paths]
    bad = scan(paths, num_threads, cache_dir) if paths else []
    bad = list(dict.fromkeys(bad))  # test = query + gallery: each file once
    if bad and report_path is None and (cache_dir is None or cache_dir):
        report_path = _cache_files(cache_dir or default_cache_dir(), paths)[1]
    written = _write_report(bad, report_path) if bad and report_path else None
    where = f"the full list is in {written}" if written else "the list was not written"
    if bad and not skip_corrupt:
        raise CorruptImageError(
            f"{name}: {describe(bad)}\n{where}; pass --skip_corrupt (skip_corrupt=True) to "
            "train and evaluate without them")
    bad_paths = {p for p, _ in bad}
    kept = {k: _without(r, bad_paths) for k, r in parts.items()}
    emptied = _emptied_classes(parts, kept)
    if emptied:
        detail = "; ".join(f"{k} classes {ids[:10].tolist()}" for k, ids in emptied.items())
        if not allow_partial:
            raise CorruptImageError(
                f"{name}: skipping the corrupt files leaves no image in {detail}; pass "
                f"--allow_partial (allow_partial=True) as well to drop those classes; {where}")
        logging.warning("%s: skipping the corrupt files drops whole classes (%s)", name, detail)
    if bad:
        logging.warning("%s: skipping %d corrupt or unreadable image file(s) of %d; %s",
                        name, len(bad), len(set(paths)), where)
    if splits is None:
        return kept["records"]
    test = kept["test"]
    if splits.query is not None:
        test = records_lib.concatenate(kept["query"], kept["gallery"])
    return records_lib.DatasetSplits(name=splits.name, train=kept["train"], test=test,
                                     query=kept["query"], gallery=kept["gallery"])


def check_encoded(contents, path):
    """In-graph guard: an Assert op that fails with the file's path when `contents` is not a
    complete JPEG/PNG/GIF/BMP file (signature; JPEG/PNG end marker in the last 64 KiB).

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
