"""TFDS builders of the four DML benchmarks, prepared from the folders users download (SPEC §7).

Each builder reads the manual download with the data set's own loader (data_pipelines.cub,
cars196, sop, inshop: the same parsing, published-size check and image check as training from
files) and writes the splits as sharded TFRecords, examples in the loader's record order:

  features: image (the file's bytes as downloaded), label (int64 original class id),
            file_name (path relative to the data set folder)
  splits:   train / test (In-shop: train / query / gallery)

Configs: ``full`` (default) fails with IncompleteDatasetError naming what is missing unless the
copy has the published sizes; ``partial`` (``ccp_cub200_2011/partial``) accepts any subset
(the loaders' ``allow_partial``), stored apart so it is never taken for the full data set.

Importing this module registers the builders with TFDS; then, e.g.::

  builder = tfds.builder("ccp_cub200_2011", data_dir=DATA_DIR)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir="/data/CUB_200_2011"))
  train = tfds.load("ccp_cub200_2011", split="train", data_dir=DATA_DIR)
"""
import dataclasses
import os

import numpy as np
import tensorflow_datasets as tfds

from data_pipelines import _layout
from data_pipelines import cars196
from data_pipelines import cub
from data_pipelines import inshop
from data_pipelines import sop
from data_pipelines import tfrecords

COPY_VERSION = "1.0.0"  # bump when the examples written change


@dataclasses.dataclass(eq=False)
class CcpConfig(tfds.core.BuilderConfig):
    """A builder config; `allow_partial` accepts a copy smaller than the published one."""

    allow_partial: bool = False


CONFIGS = [
    CcpConfig(name="full", description="The complete data set; its published sizes are "
                                       "checked (SPEC §7)."),
    CcpConfig(name="partial", allow_partial=True,
              description="Whatever subset of the data set the manual folder holds."),
]


class CcpBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Shared logic: loader -> splits -> examples. Subclasses set the class attributes below."""

    VERSION = tfds.core.Version(COPY_VERSION)
    RELEASE_NOTES = {COPY_VERSION: "Examples in the loader's record order; original class ids."}
    BUILDER_CONFIGS = CONFIGS
    LOADER = None  # the data_pipelines loader module
    MARKER = None  # a file the data set folder holds (finds it inside manual_dir)
    SPLITS = ("train", "test")
    HOMEPAGE = None
    DESCRIPTION = None

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.DESCRIPTION,
            features=tfds.features.FeaturesDict({
                tfrecords.IMAGE: tfds.features.Image(shape=(None, None, 3)),
                tfrecords.LABEL: tfds.features.Scalar(np.int64, doc="original class id"),
                tfrecords.FILE_NAME: tfds.features.Text(
                    doc="image path relative to the data set folder"),
            }),
            supervised_keys=(tfrecords.IMAGE, tfrecords.LABEL),
            disable_shuffling=True,
            homepage=self.HOMEPAGE,
        )

    def _split_generators(self, dl_manager):
        loader = self.LOADER
        root = _layout.resolve_root(os.fspath(dl_manager.manual_dir), self.MARKER,
                                    loader.SUBFOLDERS, loader.NAME, loader.LAYOUT)
        splits = loader.load(root, allow_partial=self.builder_config.allow_partial)
        return {name: self._generate_examples(getattr(splits, name), root)
                for name in self.SPLITS}

    def _generate_examples(self, records, root):
        for position, (path, label) in enumerate(zip(records.paths, records.labels)):
            yield position, {tfrecords.IMAGE: path, tfrecords.LABEL: int(label),
                             tfrecords.FILE_NAME: os.path.relpath(path, root)}


class CcpCub2002011(CcpBuilder):
    """CUB-200-2011: train = classes 1-100, test = classes 101-200."""

    name = "ccp_cub200_2011"
    LOADER = cub
    MARKER = "images.txt"
    HOMEPAGE = "https://www.vision.caltech.edu/datasets/cub_200_2011/"
    DESCRIPTION = "CUB-200-2011 birds, class-disjoint DML split (SPEC §7)."
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Download CUB_200_2011.tgz from the homepage and unpack it; pass the CUB_200_2011 folder "
        "(or its parent) as manual_dir: " + cub.LAYOUT)


class CcpCars196(CcpBuilder):
    """Cars196: train = classes 1-98, test = classes 99-196."""

    name = "ccp_cars196"
    LOADER = cars196
    MARKER = "cars_annos.mat"
    HOMEPAGE = "https://ai.stanford.edu/~jkrause/cars/car_dataset.html"
    DESCRIPTION = "Stanford Cars (196 models), class-disjoint DML split (SPEC §7)."
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Download car_ims.tgz and cars_annos.mat (the 'all images' release) and put them in one "
        "folder, car_ims unpacked; pass that folder (or its parent) as manual_dir: "
        + cars196.LAYOUT)


class CcpSop(CcpBuilder):
    """Stanford Online Products: the given Ebay_train.txt / Ebay_test.txt split."""

    name = "ccp_sop"
    LOADER = sop
    MARKER = "Ebay_train.txt"
    HOMEPAGE = "https://cvgl.stanford.edu/projects/lifted_struct/"
    DESCRIPTION = "Stanford Online Products, the given class-disjoint split (SPEC §7)."
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Download Stanford_Online_Products.zip and unpack it; pass the Stanford_Online_Products "
        "folder (or its parent) as manual_dir: " + sop.LAYOUT)


class CcpInshop(CcpBuilder):
    """DeepFashion In-shop Clothes Retrieval: train / query / gallery."""

    name = "ccp_inshop"
    LOADER = inshop
    MARKER = inshop.PARTITION
    SPLITS = ("train", "query", "gallery")
    HOMEPAGE = "https://mmlab.ie.cuhk.edu.hk/projects/DeepFashion/InShopRetrieval.html"
    DESCRIPTION = "DeepFashion In-shop Clothes Retrieval, train / query / gallery (SPEC §7)."
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Download Eval/list_eval_partition.txt and Img/img.zip (unpacked) of the In-shop "
        "benchmark into one folder; pass it (or its parent) as manual_dir: " + inshop.LAYOUT)


BUILDERS = {"cub": CcpCub2002011, "cars196": CcpCars196, "sop": CcpSop, "inshop": CcpInshop}
