"""Tests of ``sppdet.detector.backbones.caffe.mean``: ``--mean`` values and mean image files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io

from sppdet.detector.backbones.caffe.mean import read_mean
from sppdet.detector.backbones.caffe.schema import BlobProto
from sppdet.detector.backbones.caffe_alexnet import ILSVRC_2012_MEAN_BGR
from sppdet.detector.core.errors import SppdetError


def mean_image(seed: int = 0) -> np.ndarray:
    """A 3x256x256 BGR image whose channels differ and whose border differs from its centre."""
    rng = np.random.default_rng(seed)
    image = rng.uniform(0, 255, (3, 256, 256))
    image[:, :10] += 40.0  # a band the central crops leave out
    return image


def central_mean(image: np.ndarray, side: int) -> tuple[float, ...]:
    top = (image.shape[1] - side) // 2  # R-CNN: off = floor((256 - 227) / 2) + 1, 1-based
    crop = image[:, top : top + side, top : top + side]
    return tuple(float(crop[c].mean()) for c in range(3))


def test_values() -> None:
    assert read_mean("128", "zf5")[0] == (128.0, 128.0, 128.0)
    assert read_mean("104, 117,123.5", "zf5")[0] == (104.0, 117.0, 123.5)
    assert read_mean(None, "zf5")[0] == (128.0, 128.0, 128.0)  # SPP_net's caffe_anysize_test.m
    assert read_mean(None, "caffe-alexnet")[0] == ILSVRC_2012_MEAN_BGR
    with pytest.raises(SppdetError, match="give one value, three"):
        read_mean("1,2", "zf5")
    with pytest.raises(SppdetError, match="neither numbers nor an existing file"):
        read_mean("ilsvrc_2012_mean.binaryproto", "zf5")


@pytest.mark.parametrize("arch", ["zf5", "caffe-alexnet"])
def test_mean_image_files(tmp_path: Path, arch: str) -> None:
    image = mean_image()
    side = {"zf5": 224, "caffe-alexnet": 227}[arch]
    want = central_mean(image, side)
    npy = tmp_path / "mean.npy"
    np.save(npy, image)  # Caffe's python mean: [3, H, W]
    mat = tmp_path / "mean.mat"
    scipy.io.savemat(mat, {"image_mean": image.transpose(1, 2, 0).astype(np.float32)})
    blob = BlobProto(num=1, channels=3, height=256, width=256)
    blob.data.extend(image.astype(np.float32).ravel().tolist())
    binaryproto = tmp_path / "mean.binaryproto"
    binaryproto.write_bytes(blob.SerializeToString())
    for path, tolerance in ((npy, 1e-9), (mat, 1e-4), (binaryproto, 1e-4)):
        found, how = read_mean(str(path), arch)
        assert np.allclose(found, want, rtol=0, atol=tolerance), path
        assert f"central {side}x{side} crop" in how and path.name in how
    whole = image.reshape(3, -1).mean(1)
    assert not np.allclose(want, whole, atol=1.0)  # the crop matters


def test_small_mean_image_is_averaged_whole(tmp_path: Path) -> None:
    image = mean_image()[:, :100, :120]
    path = tmp_path / "small.npy"
    np.save(path, image)
    found, how = read_mean(str(path), "zf5")
    assert np.allclose(found, image.reshape(3, -1).mean(1)) and "whole image" in how


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.npy", b"not numpy", "not a NumPy array file"),
        ("gray.npy", None, "a 256x256 array, not a 3-channel mean image"),
        ("bad.binaryproto", b"\xff\xff\xff", "not a Caffe BlobProto"),
        ("mean.png", b"\x89PNG", "unknown mean file type"),
        ("other.mat", None, "no image_mean or mean_data variable"),
    ],
)
def test_bad_mean_files(tmp_path: Path, name: str, content: bytes | None, message: str) -> None:
    path = tmp_path / name
    if name == "gray.npy":
        np.save(path, np.zeros((256, 256)))
    elif name == "other.mat":
        scipy.io.savemat(path, {"something": np.zeros((4, 4, 3))})
    else:
        path.write_bytes(content or b"")
    with pytest.raises(SppdetError, match=message) as err:
        read_mean(str(path), "zf5")
    assert "\n" not in str(err.value)
