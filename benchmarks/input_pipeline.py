"""Training input pipeline throughput: data_pipelines.train_dataset vs a naive baseline.

Writes a temporary folder of real JPEG files (default 500x375, the typical CUB / Cars photo size;
seeded smooth noise so the JPEGs have realistic entropy), then measures decoded + augmented
images per second for SPEC §6 training batches (32 = 8 classes x 4 images, 227x227 random-resized
crop + flip). Baselines measured in the same run on the same files and the same index stream:

* "PIL loop": sequential PIL decode, random crop (16-100% area, aspect 3/4-4/3), bilinear resize,
  flip, stacked into a float32 batch (what a plain Python data loader does);
* "tf.data serial": train_dataset's own graph with num_parallel_calls=1 (TF intra-op threads only).

    python benchmarks/input_pipeline.py                  # 20 timed batches
    python benchmarks/input_pipeline.py --batches 50 --width 800 --height 600
"""
import argparse
import itertools
import math
import os
import sys
import tempfile
import time

import numpy as np
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import tensorflow as tf  # noqa: E402

import data_pipelines  # noqa: E402
from data_pipelines import augment  # noqa: E402
from data_pipelines.records import Records  # noqa: E402
from data_pipelines.samplers import MPerClassSampler  # noqa: E402

CLASSES_PER_BATCH, SAMPLES_PER_CLASS, IMAGE_SIZE = 8, 4, 227


def write_jpegs(folder, num_classes, per_class, width, height, seed=0):
    """Records of num_classes * per_class JPEG files (quality 90) written under `folder`."""
    rng = np.random.default_rng(seed)
    paths, labels = [], []
    for cls in range(num_classes):
        for k in range(per_class):
            coarse = rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
            image = Image.fromarray(coarse).resize((width, height), Image.BILINEAR)
            noise = rng.integers(-12, 13, (height, width, 3))
            pixels = np.clip(np.asarray(image, np.int16) + noise, 0, 255).astype(np.uint8)
            path = os.path.join(folder, f"{cls:03d}", f"{k:03d}.jpg")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            Image.fromarray(pixels).save(path, quality=90)
            paths.append(path)
            labels.append(cls)
    return Records(labels=np.array(labels), paths=tuple(paths))


def pil_batch(records, indices, rng):
    """The naive baseline: one float32 [B, 227, 227, 3] batch, sequential PIL work."""
    out = np.empty((len(indices), IMAGE_SIZE, IMAGE_SIZE, 3), np.float32)
    for row, index in enumerate(indices):
        with Image.open(records.paths[index]) as image:
            image = image.convert("RGB")
            width, height = image.size
            for _ in range(10):
                area = width * height * rng.uniform(0.16, 1.0)
                ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
                w, h = int(round(math.sqrt(area * ratio))), int(round(math.sqrt(area / ratio)))
                if w <= width and h <= height:
                    break
            else:
                w, h = width, height
            left, top = rng.integers(0, width - w + 1), rng.integers(0, height - h + 1)
            crop = image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR,
                                box=(left, top, left + w, top + h))
            if rng.random() < 0.5:
                crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
            out[row] = np.asarray(crop, np.float32)
    return out


def serial_dataset(records, seed):
    """train_dataset's per-image graph mapped with num_parallel_calls=1, no prefetch."""
    sampler = MPerClassSampler(records.labels, CLASSES_PER_BATCH, SAMPLES_PER_CLASS, seed)
    batch = sampler.batch_size
    paths = tf.constant(records.paths)
    dataset = tf.data.Dataset.from_generator(
        lambda: enumerate(sampler.batches()),
        output_signature=(tf.TensorSpec([], tf.int64), tf.TensorSpec([batch], tf.int64)))
    dataset = dataset.map(lambda step, idx: (tf.fill([batch], step),
                                             tf.range(batch, dtype=tf.int64), idx)).unbatch()

    def example(step, position, index):
        seed_pair = tf.stack([tf.constant(seed, tf.int64), step * batch + position])
        contents = tf.io.read_file(tf.gather(paths, index))
        return augment.train_transform_encoded(contents, seed_pair, IMAGE_SIZE), index

    return dataset.map(example, num_parallel_calls=1).batch(batch, drop_remainder=True)


def time_batches(iterator, num_batches, warmup=2):
    """Images per second over `num_batches` batches after `warmup` untimed ones."""
    for _ in range(warmup):
        next(iterator)
    start = time.perf_counter()
    images = 0
    for _ in range(num_batches):
        batch = next(iterator)
        images += int(batch.shape[0])
    return images / (time.perf_counter() - start)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=20, help="timed batches per method")
    parser.add_argument("--classes", type=int, default=16)
    parser.add_argument("--per-class", type=int, default=8)
    parser.add_argument("--width", type=int, default=500)
    parser.add_argument("--height", type=int, default=375)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as folder:
        begin = time.perf_counter()
        records = write_jpegs(folder, args.classes, args.per_class, args.width, args.height)
        size_kb = sum(os.path.getsize(p) for p in records.paths) / len(records) / 1024
        print(f"{len(records)} JPEGs {args.width}x{args.height} ({size_kb:.0f} KiB each) written "
              f"in {time.perf_counter() - begin:.1f} s; {os.cpu_count()} CPU cores; "
              f"batches of {CLASSES_PER_BATCH}x{SAMPLES_PER_CLASS}, {IMAGE_SIZE}x{IMAGE_SIZE}")

        dataset = data_pipelines.train_dataset(
            records, classes_per_batch=CLASSES_PER_BATCH, samples_per_class=SAMPLES_PER_CLASS,
            seed=0, image_size=IMAGE_SIZE)
        ours = time_batches((x for x, _ in dataset), args.batches)

        serial = time_batches((x for x, _ in serial_dataset(records, 0)), args.batches)

        rng = np.random.default_rng(0)
        sampler = MPerClassSampler(records.labels, CLASSES_PER_BATCH, SAMPLES_PER_CLASS, 0)
        stream = itertools.islice(sampler.batches(), args.batches + 2)
        pil = time_batches((pil_batch(records, idx, rng) for idx in stream), args.batches)

    print(f"  data_pipelines.train_dataset (AUTOTUNE, prefetch): {ours:8.1f} images/s")
    print(f"  tf.data serial (num_parallel_calls=1):             {serial:8.1f} images/s")
    print(f"  PIL sequential loop:                                {pil:8.1f} images/s")
    print(f"  ratio train_dataset / PIL loop: {ours / pil:.2f}x; "
          f"train_dataset / tf.data serial: {ours / serial:.2f}x")


if __name__ == "__main__":
    main()
