"""Accelerator check of issue 13 for a machine with a GPU: CUB-sized data, TFDS copy, cub.cfg.

1. Writes a CUB-200-2011-sized folder in the real layout (images.txt, image_class_labels.txt,
   images/NNN.Name/*.jpg): 11,788 JPEGs at CUB-like sizes (long side 500 px, short side
   250-500 px), 200 classes, 5,864 train images in classes 1-100 and 5,924 test images in
   classes 101-200. The pixels are smooth random fields, so the files are JPEG-sized like photos.
2. Prepares the TFDS copy (data_pipelines.tfds_builders.prepare).
3. Times the in-graph training input pipeline from that copy (images/s at the model's size).
4. Trains one MLRC fold of experiments/configs/cub.cfg (BN-Inception, C2-CCP, --weights=none)
   for a few epochs from the TFDS copy with --input_pipeline=ingraph, and prints the step time
   (first epoch, with tracing, apart), the validation time of that fold, and the GPU memory peak.

Everything runs in one process within ~10 minutes on a GPU machine. Scaled-down runs (CPU
check of this script) through environment variables:
  GPU_CHECK_IMAGES (11788), GPU_CHECK_CLASSES (200), GPU_CHECK_EPOCHS (3),
  GPU_CHECK_STEPS_PER_EPOCH (cub.cfg's 25), GPU_CHECK_IMAGE_SIZE (0 = BN-Inception's 227),
  GPU_CHECK_STEPS_PER_EXECUTION (1), GPU_CHECK_INPUT_BATCHES (200), GPU_CHECK_DIR (a new
  temporary folder; the generated data and the run are kept there).

Usage (GPU machine, from the repository root, after `make install`):
  .venv/bin/python benchmarks/gpu_check.py
  GPU_CHECK_STEPS_PER_EXECUTION=25 .venv/bin/python benchmarks/gpu_check.py
"""
import multiprocessing
import os
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

CUB_IMAGES, CUB_TRAIN_IMAGES, CUB_CLASSES = 11788, 5864, 200


def _env(name, default):
    return int(os.environ.get(f"GPU_CHECK_{name}", default))


def cub_plan(num_images, num_classes):
    """``[(image_id, class_id, relative path)]`` of a CUB-layout copy.

    Half of the classes are train classes (ids 1..), half test classes (ids 101..); the full
    size reproduces CUB's 5,864 / 5,924 split, a smaller one splits its images evenly.
    """
    half = num_classes // 2
    train_images = (CUB_TRAIN_IMAGES if (num_images, num_classes) == (CUB_IMAGES, CUB_CLASSES)
                    else num_images // 2)
    plan, image_id = [], 1
    for class_ids, count in ((range(1, half + 1), train_images),
                             (range(101, 101 + half), num_images - train_images)):
        per_class = np.full(half, count // half)
        per_class[:count % half] += 1
        for class_id, n in zip(class_ids, per_class):
            folder = f"{class_id:03d}.Bird_{class_id:03d}"
            for k in range(int(n)):
                plan.append((image_id, class_id, f"{folder}/Bird_{class_id:03d}_{k:04d}.jpg"))
                image_id += 1
    return plan


def _write_jpeg(job):
    from PIL import Image

    path, seed = job
    rng = np.random.default_rng(seed)
    short = int(rng.integers(250, 501))
    width, height = (500, short) if rng.random() < 0.8 else (short, 500)
    coarse = rng.integers(0, 256, size=(height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize((width, height), Image.BICUBIC)
    noise = rng.integers(-12, 13, size=(height, width, 3))
    pixels = np.clip(np.asarray(image, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, quality=90)


def write_cub_folder(root, num_images, num_classes):
    """Writes the CUB_200_2011 folder under ``root``; returns its path."""
    cub = os.path.join(root, "CUB_200_2011")
    plan = cub_plan(num_images, num_classes)
    for folder in sorted({rel.split("/")[0] for _, _, rel in plan}):
        os.makedirs(os.path.join(cub, "images", folder), exist_ok=True)
    with open(os.path.join(cub, "images.txt"), "w") as handle:
        handle.writelines(f"{i} {rel}\n" for i, _, rel in plan)
    with open(os.path.join(cub, "image_class_labels.txt"), "w") as handle:
        handle.writelines(f"{i} {c}\n" for i, c, _ in plan)
    jobs = [(os.path.join(cub, "images", rel), i) for i, _, rel in plan]
    with multiprocessing.get_context("spawn").Pool(os.cpu_count()) as pool:
        pool.map(_write_jpeg, jobs, chunksize=64)
    return cub


def _gpu_memory(tf):
    if not tf.config.list_logical_devices("GPU"):
        return "no GPU visible (CPU run)"
    info = tf.config.experimental.get_memory_info("GPU:0")
    return f"peak {info['peak'] / 2**30:.2f} GiB, current {info['current'] / 2**30:.2f} GiB"


def _input_images_per_second(config, records, batches):
    """Images/s of the in-graph training stream (decode, crop, flip, resize; batch 8 x 4)."""
    from experiments import builders

    dataset = builders.train_dataset_fn(config, records, seed=0)(0)
    iterator = iter(dataset)
    for _ in range(5):  # start-up: shard reads, autotuning
        next(iterator)
    started = time.perf_counter()
    for _ in range(batches):
        images, _ = next(iterator)
    images.numpy()
    return batches * config.batch_size / (time.perf_counter() - started)


def main():
    num_images, num_classes = _env("IMAGES", CUB_IMAGES), _env("CLASSES", CUB_CLASSES)
    work = os.environ.get("GPU_CHECK_DIR") or tempfile.mkdtemp(prefix="gpu_check_")
    partial = (num_images, num_classes) != (CUB_IMAGES, CUB_CLASSES)
    began = time.perf_counter()

    started = time.perf_counter()
    raw = write_cub_folder(os.path.join(work, "raw"), num_images, num_classes)
    print(f"[1] {num_images} JPEGs, {num_classes} classes in {raw}: "
          f"{time.perf_counter() - started:.1f} s", flush=True)

    import tensorflow as tf
    import tensorflow_datasets as tfds

    from data_pipelines import tfds_builders
    from experiments import builders, fold_training, protocol
    from experiments import flags as flags_lib

    tfds.disable_progress_bar()
    tfds_dir = os.path.join(work, "tfds")
    started = time.perf_counter()
    tfds_builders.prepare("cub", manual_dir=raw, data_dir=tfds_dir, allow_partial=partial)
    print(f"[2] TFDS copy prepared in {tfds_dir}: {time.perf_counter() - started:.1f} s",
          flush=True)

    extra = [f"--data_dir={tfds_dir}", "--data_source=tfds", "--input_pipeline=ingraph",
             "--weights=none", f"--max_epochs={_env('EPOCHS', 3)}",
             f"--output_dir={os.path.join(work, 'run')}", "--noprogress_bar",
             f"--steps_per_execution={_env('STEPS_PER_EXECUTION', 1)}",
             f"--image_size={_env('IMAGE_SIZE', 0)}"]
    if "GPU_CHECK_STEPS_PER_EPOCH" in os.environ:
        extra.append(f"--steps_per_epoch={_env('STEPS_PER_EPOCH', 25)}")
    if partial:
        extra.append("--allow_partial")
    config = flags_lib.parse_flagfile(os.path.join(ROOT, "experiments", "configs", "cub.cfg"),
                                      extra=extra)
    eval_sets, folds = protocol.prepare(config)
    fold = folds[0]
    rate = _input_images_per_second(config, fold.train, _env("INPUT_BATCHES", 200))
    print(f"[3] input pipeline (in-graph, TFDS copy, {config.resolved_image_size}px): "
          f"{rate:.0f} images/s", flush=True)

    strategy = builders.build_strategy(config)
    builders.seed_everything(config.protocol.seed)
    fold_dir = os.path.join(config.run.output_dir, "fold_0")
    started = time.perf_counter()
    model, _, training = fold_training.train_fold(config, fold, fold_dir,
                                                  config.protocol.seed, strategy)
    fold_seconds = time.perf_counter() - started
    history = training["history"]
    steps = config.protocol.steps_per_epoch
    first = history[0]["train_seconds"] / steps
    later = [record["train_seconds"] / steps for record in history[1:]]
    started = time.perf_counter()
    metrics = ccp_validation(config, model, fold, strategy)
    validation_seconds = time.perf_counter() - started
    print(f"[4] cub.cfg fold 0 ({fold.train.num_classes} train / {fold.val.num_classes} "
          f"validation classes, {len(history)} epochs x {steps} steps, batch "
          f"{config.batch_size}, steps/call {config.run.steps_per_execution}): "
          f"{fold_seconds:.1f} s in all", flush=True)
    print(f"    step time: {first * 1e3:.1f} ms (epoch 1, with tracing), "
          + (f"{np.median(later) * 1e3:.1f} ms median of later epochs" if later
             else "no later epoch (GPU_CHECK_EPOCHS=1)"))
    print(f"    validation ({len(fold.val.labels)} images, embed + MAP@R): "
          f"{validation_seconds:.1f} s; MAP@R {metrics['map_at_r']:.4f}")
    print(f"    GPU memory: {_gpu_memory(tf)}")
    print(f"devices: {[d.name for d in tf.config.list_logical_devices()]}; "
          f"total {time.perf_counter() - began:.1f} s; data and run kept in {work}")


def ccp_validation(config, model, fold, strategy):
    """The validation pass the Trainer runs after each epoch, on the fold's validation classes."""
    from ccp.training import epoch as epoch_lib
    from experiments import builders

    dataset = builders.eval_dataset(config, fold.val)
    return epoch_lib.validation_metrics(model, dataset, strategy, config.protocol.recall_at)


if __name__ == "__main__":
    main()
