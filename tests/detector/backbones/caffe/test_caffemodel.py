"""Tests of ``sppdet.detector.backbones.caffe.caffemodel``: blobs of each layer format and blob
shape spelling, read from bytes encoded by hand; one-line errors for damaged or foreign files."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from sppdet.detector.backbones.caffe.caffemodel import read_caffemodel
from sppdet.detector.core.errors import SppdetError
from tests.detector.backbones.caffe.shared import (
    FIXED32,
    key,
    num,
    random_blobs,
    sub,
    text,
    varint,
    write_net,
    zf5_trunk,
)

VALUES = np.arange(6, dtype=np.float32).reshape(2, 3) / 4 - 0.5


def packed_floats(number: int, values: np.ndarray) -> bytes:
    return sub(number, values.astype("<f4").tobytes())


def test_v2_blob_with_shape(tmp_path: Path) -> None:
    shape = sub(7, sub(1, varint(2) + varint(3)))  # BlobShape.dim, packed
    weight = sub(7, shape, packed_floats(5, VALUES))
    bias = sub(7, sub(7, sub(1, varint(2))), packed_floats(5, VALUES[0, :2]))
    data = text(1, "net") + sub(100, text(1, "conv1"), text(2, "Convolution"), weight, bias)
    path = tmp_path / "v2.caffemodel"
    path.write_bytes(data)
    blobs = read_caffemodel(path).layer("conv1")
    assert len(blobs) == 2 and blobs[0].dtype == np.float32
    assert np.array_equal(blobs[0], VALUES) and np.array_equal(blobs[1], VALUES[0, :2])


def test_v1_legacy_dims_and_unpacked_floats(tmp_path: Path) -> None:
    unpacked = b"".join(key(5, FIXED32) + struct.pack("<f", v) for v in VALUES.ravel())
    legacy = num(1, 1) + num(2, 1) + num(3, 2) + num(4, 3)  # num channels height width
    data = sub(2, text(4, "fc6"), num(5, 14), sub(6, legacy, unpacked))
    path = tmp_path / "v1.caffemodel"
    path.write_bytes(data)
    (blob,) = read_caffemodel(path).layer("fc6")
    assert blob.shape == (1, 1, 2, 3) and np.array_equal(blob[0, 0], VALUES)


def test_v0_blobs_and_double_data(tmp_path: Path) -> None:
    doubles = sub(8, VALUES.astype("<f8").tobytes())  # double_data, packed
    dims = num(1, 1) + num(2, 1) + num(3, 2) + num(4, 3)
    inner = sub(1, text(1, "conv1"), text(2, "conv"), sub(50, dims, doubles))
    path = tmp_path / "v0.caffemodel"
    path.write_bytes(sub(2, inner, text(2, "data"), text(3, "conv1")))
    (blob,) = read_caffemodel(path).layer("conv1")
    assert blob.dtype == np.float32 and np.array_equal(blob, VALUES[None, None])


def test_written_files_round_trip(tmp_path: Path) -> None:
    layers = zf5_trunk()
    blobs = random_blobs(layers, 3)
    for version in ("V0", "V1", "V2"):
        _, caffemodel = write_net(tmp_path, version, layers, blobs, version)
        found = read_caffemodel(caffemodel)
        for name, (weight, bias) in blobs.items():
            w, b = found.layer(name)
            assert np.array_equal(w.reshape(weight.shape), weight)
            assert np.array_equal(b.reshape(-1), bias)
        assert found.layer("relu1") == [] and found.layer("nothing") == []


@pytest.fixture
def caffemodel(tmp_path: Path) -> Path:
    layers = zf5_trunk()
    return write_net(tmp_path, "zf5", layers, random_blobs(layers, 0), "V1")[1]


def test_truncated_file(caffemodel: Path) -> None:
    data = caffemodel.read_bytes()
    caffemodel.write_bytes(data[: len(data) // 2])
    with pytest.raises(SppdetError, match="truncated or corrupt caffemodel") as err:
        read_caffemodel(caffemodel)
    assert "\n" not in str(err.value)


def test_wrong_value_count(tmp_path: Path) -> None:
    data = sub(100, text(1, "c"), sub(7, num(1, 1), num(2, 7), packed_floats(5, VALUES)))
    path = tmp_path / "short.caffemodel"
    path.write_bytes(data)
    with pytest.raises(SppdetError, match="layer 'c' has a 1x7x0x0 blob holding 6 values"):
        read_caffemodel(path)


@pytest.mark.parametrize(
    ("lead", "message"),
    [
        (b"PK\x03\x04rest", "a zip archive"),
        (b"\x89HDF\r\n\x1a\nrest", "an HDF5 file"),
        (b'name: "ZF"\nlayers {', "not a Caffe binary net .it reads as text: a prototxt"),
        (b"\x89PNG\r\n\x1a\n", "not a Caffe binary net"),
        (b"", "empty file"),
    ],
)
def test_foreign_files_are_refused_by_their_start(tmp_path: Path, lead: bytes, message: str):
    path = tmp_path / "x.caffemodel"
    path.write_bytes(lead)
    with pytest.raises(SppdetError, match=message) as err:
        read_caffemodel(path)
    assert "\n" not in str(err.value)


def test_a_torch_checkpoint_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "zf5.pt"
    torch.save({"a": torch.zeros(2)}, path)
    with pytest.raises(SppdetError, match="a zip archive .a PyTorch checkpoint"):
        read_caffemodel(path)
