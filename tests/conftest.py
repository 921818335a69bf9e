"""Shared test setup: two logical CPU devices (for tf.distribute tests) and quiet logs; the
`damage` fixture (corrupt JPEG files in place)."""
import os
import types

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import ccp  # noqa: E402,F401  (before TensorFlow: the product's CPU kernels, ccp.prefer_onednn)
import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
try:
    tf.config.set_logical_device_configuration(
        _cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2
    )
except RuntimeError:  # devices already initialized by an earlier import
    pass


def damage_jpeg_header(path):
    """Overwrites 20 bytes of the JPEG's first Huffman table; start and end markers intact
    (TF: "jpeg::Uncompress failed", no file name)."""
    data = bytearray(open(path, "rb").read())
    at = data.index(b"\xff\xc4") + 5  # after the DHT marker, length and table class/id
    data[at:at + 20] = b"\x55" * 20
    open(path, "wb").write(bytes(data))


def damage_jpeg_middle(path):
    """Zeroes 40 bytes in the middle of the entropy-coded scan; size and markers intact (TF
    and PIL decode it, libjpeg warns "Corrupt JPEG data: N extraneous bytes")."""
    data = bytearray(open(path, "rb").read())
    sos = data.index(b"\xff\xda")
    start = sos + 2 + int.from_bytes(data[sos + 2:sos + 4], "big")
    middle = (start + len(data) - 2) // 2
    data[middle:middle + 40] = bytes(40)
    open(path, "wb").write(bytes(data))


@pytest.fixture()
def damage():
    """The two JPEG damages of issue 10: damage.header(path), damage.middle(path) (in place)."""
    return types.SimpleNamespace(header=damage_jpeg_header, middle=damage_jpeg_middle)
