"""TFDS builders ccp_cub200_2011, ccp_cars196, ccp_sop, ccp_inshop (registered on import).

Prepare once from the downloaded folder, then train from the copy::

  from data_pipelines import tfds_builders
  tfds_builders.prepare("cub", manual_dir="/data/CUB_200_2011", data_dir="gs://bucket/tfds")
  splits = data_pipelines.load("cub", "gs://bucket/tfds", data_source="tfds")
"""
from data_pipelines.tfds_builders.builders import BUILDERS
from data_pipelines.tfds_builders.builders import CcpCars196
from data_pipelines.tfds_builders.builders import CcpCub2002011
from data_pipelines.tfds_builders.builders import CcpInshop
from data_pipelines.tfds_builders.builders import CcpSop
from data_pipelines.tfds_builders.reading import builder
from data_pipelines.tfds_builders.reading import load_prepared
from data_pipelines.tfds_builders.reading import prepare

__all__ = ["BUILDERS", "CcpCars196", "CcpCub2002011", "CcpInshop", "CcpSop", "builder",
           "load_prepared", "prepare"]
