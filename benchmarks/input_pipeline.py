"""Training input pipeline throughput: TFRecord (TFDS copy) vs raw files vs the generator pipeline.

Writes a temporary CUB_200_2011 folder in the real layout (default 16 training classes x 8 real
JPEGs of 500x375, the typical CUB / Cars photo size, seeded smooth noise so the JPEGs have
realistic entropy; two test classes so every split exists), prepares its TFDS copy with the
ccp_cub200_2011 builder ("partial" config), and measures decoded + augmented images per second
for SPEC §6 training batches (32 = 8 classes x 4 images, 227x227 random-resized crop + flip):

* "TFRecord, in-graph": data_pipelines.load(..., data_source="tfds") + train_dataset(
  input_pipeline="ingraph"): encoded images read once from the TFRecord shards (parallel
  interleave, timed separately), no Python in the graph;
* "raw files, in-graph": the raw folder, the same in-graph pipeline (one file read per image;
  the default training input since 2026-12);
* "raw files, generator": the numpy sampler through from_generator (the default before; kept
  as ``--input_pipeline=generator`` to reproduce earlier runs' batches).

All three run the same decode + augmentation graph; methods alternate over `--repeats` rounds and
the median is reported, with the ratios to the generator pipeline measured in the same run.

    python benchmarks/input_pipeline.py                  # 30 timed batches per method and round
    python benchmarks/input_pipeline.py --batches 50 --width 800 --height 600
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import tensorflow as tf  # noqa: E402,F401  (TensorFlow first: its start-up is not timed)
import tensorflow_datasets as tfds  # noqa: E402

import data_pipelines  # noqa: E402
from data_pipelines import tfds_builders  # noqa: E402

CLASSES_PER_BATCH, SAMPLES_PER_CLASS, IMAGE_SIZE = 8, 4, 227
TEST_CLASSES = (101, 102)  # CUB test class ids: one image each, so the test split exists


def _write_jpeg(path, rng, width, height):
    coarse = rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize((width, height), Image.BILINEAR)
    noise = rng.integers(-12, 13, (height, width, 3))
    pixels = np.clip(np.asarray(image, np.int16) + noise, 0, 255).astype(np.uint8)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(pixels).save(path, quality=90)


def write_cub_folder(parent, num_classes, per_class, width, height, seed=0):
    """A CUB_200_2011 folder under `parent`: train classes 1..num_classes x per_class JPEGs."""
    rng = np.random.default_rng(seed)
    root = os.path.join(parent, "CUB_200_2011")
    images, labels = [], []
    classes = [(c, per_class) for c in range(1, num_classes + 1)] + [(c, 1) for c in TEST_CLASSES]
    for cls, count in classes:
        for k in range(count):
            rel = f"{cls:03d}.Class_{cls}/Class_{cls}_{k:03d}.jpg"
            _write_jpeg(os.path.join(root, "images", rel), rng, width, height)
            images.append(f"{len(images) + 1} {rel}")
            labels.append(f"{len(labels) + 1} {cls}")
    with open(os.path.join(root, "images.txt"), "w") as handle:
        handle.write("\n".join(images) + "\n")
    with open(os.path.join(root, "image_class_labels.txt"), "w") as handle:
        handle.write("\n".join(labels) + "\n")
    return root


def images_per_second(dataset, num_batches, warmup=3):
    """Images per second over `num_batches` batches after `warmup` untimed ones."""
    iterator = iter(dataset)
    for _ in range(warmup):
        next(iterator)
    start = time.perf_counter()
    images = 0
    for _ in range(num_batches):
        batch, _ = next(iterator)
        images += int(batch.shape[0])
    return images / (time.perf_counter() - start)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=30, help="timed batches per method")
    parser.add_argument("--repeats", type=int, default=3, help="alternating rounds (median)")
    parser.add_argument("--classes", type=int, default=16)
    parser.add_argument("--per-class", type=int, default=8)
    parser.add_argument("--width", type=int, default=500)
    parser.add_argument("--height", type=int, default=375)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as folder:
        begin = time.perf_counter()
        root = write_cub_folder(os.path.join(folder, "raw"), args.classes, args.per_class,
                                args.width, args.height)
        raw = data_pipelines.load("cub", root, allow_partial=True, cache_dir="")
        size_kb = np.mean([os.path.getsize(p) for p in raw.train.paths]) / 1024
        print(f"{len(raw.train)} training JPEGs {args.width}x{args.height} ({size_kb:.0f} KiB "
              f"each) written in {time.perf_counter() - begin:.1f} s; {os.cpu_count()} CPU "
              f"cores; batches of {CLASSES_PER_BATCH}x{SAMPLES_PER_CLASS}, "
              f"{IMAGE_SIZE}x{IMAGE_SIZE}")
        tfds_dir = os.path.join(folder, "tfds")
        tfds.disable_progress_bar()
        begin = time.perf_counter()
        tfds_builders.prepare("cub", root, tfds_dir, allow_partial=True)
        print(f"TFDS copy ccp_cub200_2011/partial prepared in {time.perf_counter() - begin:.1f} s")
        copy = data_pipelines.load("cub", tfds_dir, data_source="tfds", allow_partial=True)

        def pipeline(records, input_pipeline):
            return data_pipelines.train_dataset(
                records, classes_per_batch=CLASSES_PER_BATCH,
                samples_per_class=SAMPLES_PER_CLASS, seed=0, image_size=IMAGE_SIZE,
                input_pipeline=input_pipeline)

        begin = time.perf_counter()
        methods = {"TFRecord (TFDS copy), in-graph": pipeline(copy.train, "ingraph")}
        print(f"TFRecord pipeline built (encoded images read from the shards) in "
              f"{time.perf_counter() - begin:.2f} s")
        methods["raw files, in-graph"] = pipeline(raw.train, "ingraph")
        methods["raw files, generator (the old default)"] = pipeline(raw.train, "generator")
        rates = {name: [] for name in methods}
        for _ in range(args.repeats):
            for name, dataset in methods.items():
                rates[name].append(images_per_second(dataset, args.batches))

    baseline = statistics.median(rates["raw files, generator (the old default)"])
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"  {name:40s} {median:8.1f} images/s  ({median / baseline:.2f}x the generator; "
              f"rounds: {', '.join(f'{v:.0f}' for v in values)})")


if __name__ == "__main__":
    main()
