"""Trained Caffe weights (a binary caffemodel): ``read_caffemodel`` -> layer name -> blobs.

A caffemodel is a serialised ``NetParameter`` whose layers carry their blobs (V2 ``layer``,
V1 ``layers``, or V0 ``layers { layer }``); only names and blobs are decoded
(``schema.NetWeights``). A blob's shape is its ``shape`` message or, in older files, its
num/channels/height/width; its values are ``data`` (float) or ``double_data``.

Protobuf has no magic number, so the first field tag stands in for one: a caffemodel starts with
one of NetParameter's fields with its wire type. That turns away text prototxts, PyTorch zips,
HDF5 files and the like before protobuf reads them as garbage.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError

from sppdet.detector.backbones.caffe.schema import NetWeights
from sppdet.detector.core.errors import SppdetError

_VARINT, _LENGTH = 0, 2
# NetParameter field number -> wire types it may start a caffemodel with.
_FIRST_FIELDS = {
    1: {_LENGTH},  # name
    2: {_LENGTH},  # layers (V0/V1)
    3: {_LENGTH},  # input
    4: {_VARINT, _LENGTH},  # input_dim
    5: {_VARINT},  # force_backward
    6: {_LENGTH},  # state
    7: {_VARINT},  # debug_info
    8: {_LENGTH},  # input_shape
    100: {_LENGTH},  # layer (V2)
}
_KNOWN_FORMATS = {  # leading bytes -> what the file is instead
    b"PK\x03\x04": "a zip archive (a PyTorch checkpoint?)",
    b"\x89HDF\r\n\x1a\n": "an HDF5 file (Caffe's .caffemodel.h5 is not read)",
    b"\x93NUMPY": "a NumPy array",
    b"\x1f\x8b": "gzip data (unpack the release archive first)",
}


@dataclass(frozen=True)
class CaffeWeights:
    path: Path
    blobs: dict[str, list[np.ndarray]]  # layer name -> its blobs, float32, in the file's shapes

    def layer(self, name: str) -> list[np.ndarray]:
        return self.blobs.get(name, [])


def read_caffemodel(path: str | Path) -> CaffeWeights:
    """The blobs of every layer of the caffemodel at PATH, by layer name."""
    path = Path(path)
    if not path.is_file():
        raise SppdetError(f"{path}: caffemodel not found ; pass the trained net with --caffemodel")
    data = path.read_bytes()
    _check_start(data, path)
    message = NetWeights()
    try:
        message.ParseFromString(data)
    except DecodeError as exc:
        raise SppdetError(
            f"{path}: truncated or corrupt caffemodel ({exc}) ; download or copy it again"
        ) from None
    blobs: dict[str, list[np.ndarray]] = {}
    for entry in message.layer:
        blobs[entry.name] = [blob_array(b, entry.name, path) for b in entry.blobs]
    for entry in message.layers:
        inner = entry.layer if entry.HasField("layer") else entry
        blobs[inner.name] = [blob_array(b, inner.name, path) for b in inner.blobs]
    if not blobs:
        raise SppdetError(f"{path}: a caffemodel without layers ; pass the trained net's file")
    return CaffeWeights(path, blobs)


def _check_start(data: bytes, path: Path) -> None:
    if not data:
        raise SppdetError(f"{path}: empty file ; pass the trained net with --caffemodel")
    for lead, what in _KNOWN_FORMATS.items():
        if data.startswith(lead):
            raise SppdetError(f"{path}: {what}, not a caffemodel ; pass Caffe's binary weights")
    tag, _ = _varint(data[:10])
    if tag is None or (tag & 7) not in _FIRST_FIELDS.get(tag >> 3, set()):
        hint = " (it reads as text: a prototxt?)" if data[:64].isascii() else ""
        raise SppdetError(
            f"{path}: not a Caffe binary net{hint} ; pass the .caffemodel with --caffemodel and "
            "the text definition with --prototxt"
        )


def _varint(data: bytes) -> tuple[int | None, int]:
    """The varint at the start of DATA and its length, or (None, 0) if it does not end there."""
    value = 0
    for i, byte in enumerate(data):
        value |= (byte & 0x7F) << (7 * i)
        if byte < 0x80:
            return value, i + 1
    return None, 0


def blob_array(blob: Any, layer: str, path: Path) -> np.ndarray:
    """One BlobProto as a float32 array of its declared shape."""
    if len(blob.shape.dim):
        shape = tuple(int(d) for d in blob.shape.dim)
    else:
        legacy = (blob.num, blob.channels, blob.height, blob.width)
        shape = tuple(int(d) for d in legacy)
    values = blob.data if len(blob.data) else blob.double_data
    array = np.array(values, dtype=np.float32)
    if array.size != int(np.prod(shape)):
        raise SppdetError(
            f"{path}: layer '{layer}' has a {'x'.join(map(str, shape))} blob holding "
            f"{array.size} values ; the file is damaged, copy it again"
        )
    return array.reshape(shape)
