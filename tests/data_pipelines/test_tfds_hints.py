"""Issue 24 case 7: the "no prepared copy" error points at the other copy lying next to it."""
import re

import pytest

import data_pipelines
from data_pipelines import tfds_builders


def test_missing_full_copy_names_the_partial_copy_next_to_it(cub_dir, tmp_path):
    tfds_dir = str(tmp_path / "tfds")
    tfds_builders.prepare("cub", cub_dir, tfds_dir, allow_partial=True)
    with pytest.raises(FileNotFoundError) as raised:
        data_pipelines.load("cub", tfds_dir, data_source="tfds")
    message = str(raised.value)
    assert re.search(r"no prepared TFDS copy ccp_cub200_2011/full in .*; the partial copy "
                     r"ccp_cub200_2011/partial lies next to it", message)
    assert "--allow_partial" in message
    copy = data_pipelines.load("cub", tfds_dir, data_source="tfds", allow_partial=True)
    assert len(copy.train) == 6
