"""``--mean``: what a Caffe net subtracts from its BGR 0-255 input, as three per-channel values.

It is a number (one mean for all channels, SPP_net's 128), three numbers B,G,R, or a mean image
file: Caffe's ``.binaryproto`` (a BlobProto, [1, 3, H, W]), a ``.npy`` ([3, H, W], Caffe's
python/caffe/imagenet/ilsvrc_2012_mean.npy) or a MATLAB ``.mat`` ([H, W, 3], R-CNN's
ilsvrc_2012_mean.mat, variable ``image_mean`` or ``mean_data``), all BGR. sppdet runs the trunk
on whole images of any size, where a fixed-size mean image cannot be subtracted pixel by pixel,
so an image becomes its per-channel mean over the central crop of the net's input size (R-CNN
subtracts that crop from each 227 x 227 warped window).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io
from google.protobuf.message import DecodeError

from sppdet.detector.backbones.caffe.caffemodel import blob_array
from sppdet.detector.backbones.caffe.schema import BlobProto
from sppdet.detector.backbones.registry import backbone_spec
from sppdet.detector.core.errors import SppdetError

Mean = tuple[float, float, float]
MAT_VARIABLES = ("image_mean", "mean_data")  # R-CNN's, then matcaffe's


def read_mean(text: str | None, arch: str) -> tuple[Mean, str]:
    """(B, G, R mean in 0-255, how it was found) for ``--mean`` TEXT; None: ARCH's default, the
    mean its registry entry declares (ZF-5: SPP_net's 128; Caffe AlexNet: the ILSVRC 2012 mean
    image's)."""
    spec = backbone_spec(arch)
    if text is None:
        mean = spec.preprocessing.mean
        return mean, f"{spec.title}'s default mean {_values(mean)}"
    values = _numbers(text)
    if values is not None:
        if len(values) not in (1, 3):
            raise SppdetError(f"--mean {text}: give one value, three (B,G,R) or a mean image file")
        mean3 = (values * 3)[:3] if len(values) == 1 else values
        return (mean3[0], mean3[1], mean3[2]), f"mean {_values(mean3)}"
    path = Path(text)
    if not path.is_file():
        raise SppdetError(
            f"--mean {text}: neither numbers nor an existing file ; give B,G,R values or a mean "
            "image (.binaryproto, .npy or .mat)"
        )
    image = _mean_image(path)
    side = spec.input_size
    height, width = image.shape[1:]
    if height > side and width > side:
        top, left = (height - side) // 2, (width - side) // 2
        crop = image[:, top : top + side, left : left + side]
        how = f"central {side}x{side} crop"
    else:
        crop, how = image, "whole image"
    mean = tuple(float(v) for v in crop.reshape(3, -1).mean(axis=1, dtype=np.float64))
    found = (mean[0], mean[1], mean[2])
    return found, f"mean {_values(found)} of {path.name} ({height}x{width}, {how})"


def _numbers(text: str) -> list[float] | None:
    try:
        return [float(v) for v in text.replace(" ", "").split(",")]
    except ValueError:
        return None


def _values(mean: tuple[float, ...] | list[float]) -> str:
    return ",".join(f"{v:.6g}" for v in mean)


def _mean_image(path: Path) -> np.ndarray:
    """The mean image at PATH as [3, H, W] (BGR)."""
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise SppdetError(f"{path}: not a NumPy array file ({exc})") from None
        return _channels_first(array, path, channel_axis=0)
    if suffix == ".mat":
        return _channels_first(_mat_array(path), path, channel_axis=-1)
    if suffix == ".binaryproto":
        blob = BlobProto()
        try:
            blob.ParseFromString(path.read_bytes())
        except DecodeError:
            raise SppdetError(f"{path}: not a Caffe BlobProto ; pass a .binaryproto mean") from None
        return _channels_first(blob_array(blob, "mean", path), path, channel_axis=0)
    raise SppdetError(f"{path}: unknown mean file type ; pass a .binaryproto, .npy or .mat file")


def _mat_array(path: Path) -> np.ndarray:
    try:
        variables = scipy.io.loadmat(path)
    except (ValueError, NotImplementedError, OSError) as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
        raise SppdetError(f"{path}: unreadable .mat file ({reason}) ; save it with -v7") from None
    for name in MAT_VARIABLES:
        if name in variables:
            return np.asarray(variables[name])
    raise SppdetError(
        f"{path}: no {' or '.join(MAT_VARIABLES)} variable ; pass the mean image R-CNN or "
        "matcaffe ships, or B,G,R values"
    )


def _channels_first(array: np.ndarray, path: Path, channel_axis: int) -> np.ndarray:
    while array.ndim > 3 and array.shape[0] == 1:  # a [1, 3, H, W] blob
        array = array[0]
    if array.ndim != 3 or array.shape[channel_axis] != 3:
        shape = "x".join(map(str, array.shape))
        raise SppdetError(f"{path}: a {shape} array, not a 3-channel mean image")
    return np.moveaxis(array.astype(np.float64), channel_axis, 0)
