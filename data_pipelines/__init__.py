"""Data sets, class folds, samplers and tf.data pipelines for deep metric learning.

Independent of `ccp`: records in, tf.data batches out.
"""
from data_pipelines import cars196
from data_pipelines import cub
from data_pipelines import digits
from data_pipelines import inshop
from data_pipelines import sop
from data_pipelines.augment import INPUT_CONVENTIONS
from data_pipelines.augment import apply_input_convention
from data_pipelines.augment import eval_transform
from data_pipelines.augment import train_transform
from data_pipelines.folds import Fold
from data_pipelines.folds import class_folds
from data_pipelines.pipelines import CorruptImageError
from data_pipelines.pipelines import eval_dataset
from data_pipelines.pipelines import one_per_class_dataset
from data_pipelines.pipelines import train_dataset
from data_pipelines.pipelines import validate_images
from data_pipelines.records import DatasetSplits
from data_pipelines.records import Records
from data_pipelines.records import concatenate
from data_pipelines.samplers import MPerClassSampler
from data_pipelines.samplers import one_per_class_indices

LOADERS = {
    "cub": cub.load,
    "cars196": cars196.load,
    "sop": sop.load,
    "inshop": inshop.load,
    "digits": digits.load,
}


def load(name, data_dir=None, **kwargs):
    """DatasetSplits of data set `name` read from `data_dir` (SPEC §7).

    Args:
      name: one of LOADERS ("cub", "cars196", "sop", "inshop", "digits").
      data_dir: the data set's root folder or its parent; None for "digits".
      **kwargs: loader options (digits: image_size).
    """
    if name not in LOADERS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {sorted(LOADERS)}")
    return LOADERS[name](data_dir, **kwargs)
