"""Data sets, class folds, samplers and tf.data pipelines for deep metric learning.

Independent of `ccp`: records in, tf.data batches out.
"""
from data_pipelines import _layout
from data_pipelines import cars196
from data_pipelines import cub
from data_pipelines import digits
from data_pipelines import glyphs
from data_pipelines import inshop
from data_pipelines import sop
from data_pipelines.augment import eval_transform
from data_pipelines.augment import train_transform
from data_pipelines.folds import Fold
from data_pipelines.folds import class_folds
from data_pipelines.images import check_images
from data_pipelines.pipelines import CorruptImageError
from data_pipelines.pipelines import eval_dataset
from data_pipelines.pipelines import one_per_class_dataset
from data_pipelines.pipelines import train_dataset
from data_pipelines.pipelines import validate_images
from data_pipelines._layout import IncompleteDatasetError
from data_pipelines.records import DatasetSplits
from data_pipelines.records import Records
from data_pipelines.records import concatenate
from data_pipelines.samplers import MPerClassSampler
from data_pipelines.samplers import one_per_class_indices

FILE_LOADERS = {  # read a user's copy; run _layout.Checks before returning
    "cub": cub.load,
    "cars196": cars196.load,
    "sop": sop.load,
    "inshop": inshop.load,
}
LOADERS = {
    **FILE_LOADERS,
    "digits": digits.load,
    "glyphs": glyphs.load,
}
EMBEDDED = ("digits", "glyphs")  # rendered here, no data_dir; loaders take image_size
DATA_SOURCES = ("files", "tfds")  # where load() reads a FILE_LOADERS data set from
# loader options that change records (read from the files only): CUB variants, box crops
FILE_ONLY_OPTIONS = ("variant", "noise_seed", "crop_to_bbox", "crop_dir")


def load(name, data_dir=None, skip_corrupt=False, allow_partial=False, data_source="files",
         **kwargs):
    """DatasetSplits of data set `name` read from `data_dir` (SPEC §7).

    A file data set (FILE_LOADERS) is fully checked before this returns: layout, listed files,
    the official class split, the published sizes, and every image decoded once (cached).

    Args:
      name: one of LOADERS ("cub", "cars196", "sop", "inshop", "digits", "glyphs").
      data_dir: the data set's root folder or its parent; None for EMBEDDED ("digits",
        "glyphs"; glyphs also takes samples_per_face, seed, split_seed, render_cache_dir).
      skip_corrupt: drop images that do not decode (one warning naming the count and the file
        listing them) instead of raising CorruptImageError.
      allow_partial: accept a copy smaller than the published one (missing files dropped, one
        warning naming what is missing) instead of raising IncompleteDatasetError.
      **kwargs: loader options: the other fields of _layout.Checks (cache_dir, report_path,
        check_files, check_images) and `expected` for file data sets; cub and cars196:
        crop_to_bbox, crop_dir; cub: variant ("standard", "closed", "low_noise",
        "medium_noise", "high_noise"), noise_seed; digits: image_size.
        Embedded data sets (no files) ignore the check options.
      data_source: "files" reads the downloaded folder `data_dir`; "tfds" reads the prepared
        TFDS copy (data_pipelines.tfds_builders) in the TFDS data folder `data_dir`: the same
        records, labels and order, images read from its TFRecord shards (the copy was checked
        when prepared, so skip_corrupt and the check options do not apply; allow_partial reads
        the "partial" copy).
    """
    if name not in LOADERS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {sorted(LOADERS)}")
    if data_source not in DATA_SOURCES:
        raise ValueError(f"unknown data_source {data_source!r}; expected one of {DATA_SOURCES}")
    if data_source == "tfds":
        if name not in FILE_LOADERS:
            raise ValueError(f"data_source='tfds' needs one of {sorted(FILE_LOADERS)}, got "
                             f"{name!r} (embedded data sets are generated, not prepared)")
        file_only = sorted(k for k in FILE_ONLY_OPTIONS
                           if kwargs.get(k) not in (None, False, 0, "standard"))
        if file_only:
            raise ValueError(f"{name}: option(s) {file_only} need data_source='files' (the "
                             "TFDS copy holds the standard, uncropped data set)")
        from data_pipelines import tfds_builders  # imports tensorflow_datasets: only when asked
        return tfds_builders.load_prepared(name, data_dir, allow_partial=allow_partial)
    checks = {"skip_corrupt": skip_corrupt, "allow_partial": allow_partial}
    if name in FILE_LOADERS:
        return FILE_LOADERS[name](data_dir, **checks, **kwargs)
    kwargs = {k: v for k, v in kwargs.items() if k not in _layout.CHECK_OPTIONS}
    return LOADERS[name](data_dir, **kwargs)
