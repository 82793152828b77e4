"""A Caffe net definition (prototxt) as plain records: ``read_prototxt`` -> ``CaffeNet``.

The three layer formats Caffe has had read into the same ``CaffeLayer`` records:

* V2: ``layer { name type: "Convolution" bottom top convolution_param {...} }``;
* V1: ``layers { name type: CONVOLUTION bottom top convolution_param {...} }``;
* V0: ``layers { layer { name type: "conv" ... } bottom top }``, with the layer's settings either
  flat in the inner block (BVLC's V0: ``kernelsize``, ``num_output``...) or in nested
  ``conv_param``-style blocks (the SPP_net release's modified Caffe).

Kernel, stride and padding are (height, width) pairs whichever way the file spells them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf import text_format

from sppdet.detector.backbones.caffe.schema import ROUND_MODES, NetParameter
from sppdet.detector.core.errors import SppdetError

Pair = tuple[int, int]  # (height, width)


@dataclass(frozen=True)
class Conv:
    num_output: int
    kernel: Pair
    stride: Pair
    pad: Pair
    dilation: Pair
    group: int
    bias: bool


@dataclass(frozen=True)
class Pool:
    method: str  # MAX | AVE | STOCHASTIC
    kernel: Pair
    stride: Pair
    pad: Pair
    ceil: bool  # Caffe's default rounding of the output size; FLOOR when False
    global_pooling: bool


@dataclass(frozen=True)
class Lrn:
    region: str  # ACROSS_CHANNELS | WITHIN_CHANNEL
    size: int
    alpha: float
    beta: float
    k: float


@dataclass(frozen=True)
class InnerProduct:
    num_output: int
    bias: bool
    axis: int
    transpose: bool  # weights stored [inputs, outputs] instead of [outputs, inputs]


@dataclass(frozen=True)
class Concat:
    axis: int


@dataclass(frozen=True)
class Flatten:
    axis: int
    end_axis: int


@dataclass(frozen=True)
class Relu:
    negative_slope: float


@dataclass(frozen=True)
class Padding:
    """V0's separate zero-padding layer, which later Caffe folds into the next convolution."""

    pad: int


Params = Conv | Pool | Lrn | InnerProduct | Concat | Flatten | Relu | Padding | None


@dataclass(frozen=True)
class CaffeLayer:
    name: str
    kind: str  # conv pool lrn relu fc concat flatten dropout padding input data split other
    type_name: str  # the type as the file writes it, for messages
    bottoms: tuple[str, ...]
    tops: tuple[str, ...]
    params: Params = None


@dataclass(frozen=True)
class CaffeNet:
    path: Path
    version: str  # V0 | V1 | V2
    layers: tuple[CaffeLayer, ...]
    inputs: dict[str, tuple[int, ...]] = field(default_factory=dict)  # blob -> declared shape


_DATA_TYPES_V0 = ("data", "images", "window_data", "hdf5_data")
_KINDS_V0 = {
    "conv": "conv",
    "pool": "pool",
    "lrn": "lrn",
    "relu": "relu",
    "innerproduct": "fc",
    "inner_product": "fc",  # SPP_net's spelling
    "concat": "concat",
    "flatten": "flatten",
    "dropout": "dropout",
    "padding": "padding",
    "split": "split",
} | dict.fromkeys(_DATA_TYPES_V0, "data")
_DATA_TYPES_V1 = ("DATA", "IMAGE_DATA", "WINDOW_DATA", "HDF5_DATA", "MEMORY_DATA", "DUMMY_DATA")
_KINDS_V1 = {
    "CONVOLUTION": "conv",
    "POOLING": "pool",
    "LRN": "lrn",
    "RELU": "relu",
    "INNER_PRODUCT": "fc",
    "CONCAT": "concat",
    "FLATTEN": "flatten",
    "DROPOUT": "dropout",
    "SPLIT": "split",
} | dict.fromkeys(_DATA_TYPES_V1, "data")
_DATA_TYPES_V2 = ("Data", "ImageData", "WindowData", "HDF5Data", "MemoryData", "DummyData")
_KINDS_V2 = {
    "Convolution": "conv",
    "Pooling": "pool",
    "LRN": "lrn",
    "ReLU": "relu",
    "InnerProduct": "fc",
    "Concat": "concat",
    "Flatten": "flatten",
    "Dropout": "dropout",
    "Split": "split",
    "Input": "input",
} | dict.fromkeys(_DATA_TYPES_V2, "data")


def read_prototxt(path: str | Path) -> CaffeNet:
    """Parse the net definition at PATH (protobuf text format, any layer format)."""
    path = Path(path)
    if not path.is_file():
        raise SppdetError(f"{path}: prototxt not found ; pass the net definition with --prototxt")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SppdetError(
            f"{path}: binary data, not a text prototxt ; pass the net definition with --prototxt "
            "and the trained weights with --caffemodel"
        ) from None
    message = NetParameter()
    try:
        text_format.Parse(text, message, allow_unknown_field=True)
    except text_format.ParseError as exc:
        reason = (str(exc).splitlines() or ["parse error"])[0][:160]
        raise SppdetError(
            f"{path}: not a Caffe prototxt ({reason}) ; pass the net definition Caffe reads"
        ) from None
    return net_from_message(message, path)


def net_from_message(message: Any, path: Path) -> CaffeNet:
    """A parsed ``NetParameter`` as a CaffeNet (PATH names it in messages)."""
    if len(message.layer) and len(message.layers):
        raise SppdetError(
            f"{path}: mixes V2 `layer` and V1 `layers` entries, which Caffe refuses ; upgrade it "
            "with Caffe's upgrade_net_proto_text"
        )
    if len(message.layer):
        version, layers = "V2", [_layer_v2(entry, path) for entry in message.layer]
    elif len(message.layers):
        v0 = any(entry.HasField("layer") for entry in message.layers)
        version = "V0" if v0 else "V1"
        layers = [_layer_v0(e, path) if v0 else _layer_v1(e, path) for e in message.layers]
    else:
        raise SppdetError(f"{path}: no layers ; pass the prototxt of the net the caffemodel holds")
    return CaffeNet(path, version, tuple(layers), _inputs(message))


def _inputs(message: Any) -> dict[str, tuple[int, ...]]:
    """Input blob -> declared shape (empty when undeclared): NetParameter ``input`` with an
    ``input_shape`` or four ``input_dim`` values each, and V2 ``Input`` layers (one shape per
    top, or one for all)."""
    inputs: dict[str, tuple[int, ...]] = {}
    dims = list(message.input_dim)
    for i, name in enumerate(message.input):
        if len(message.input_shape) > i:
            inputs[name] = tuple(int(d) for d in message.input_shape[i].dim)
        elif len(dims) >= 4 * (i + 1):
            inputs[name] = tuple(int(d) for d in dims[4 * i : 4 * i + 4])
        else:
            inputs[name] = ()
    for entry in message.layer:
        if _KINDS_V2.get(entry.type) == "input":
            shapes = [tuple(int(d) for d in s.dim) for s in entry.input_param.shape]
            for j, top in enumerate(entry.top):
                inputs[top] = shapes[j] if j < len(shapes) else (shapes[0] if shapes else ())
    return inputs


# The settings block of each kind, under its V1/V2 name and under SPP_net's V0 name.
_BLOCKS = {
    "conv": "convolution_param",
    "pool": "pooling_param",
    "lrn": "lrn_param",
    "fc": "inner_product_param",
    "concat": "concat_param",
    "flatten": "flatten_param",
    "relu": "relu_param",
}
_FORK_BLOCKS = {
    "conv": "conv_param",
    "pool": "pool_param",
    "lrn": "lrn_param",
    "fc": "inner_product_param",
    "concat": "concat_param",
}


def _layer_v2(entry: Any, path: Path) -> CaffeLayer:
    kind = _KINDS_V2.get(entry.type, "other")
    params = _params(kind, _block(entry, _BLOCKS.get(kind)), entry.name, path)
    return CaffeLayer(entry.name, kind, entry.type, tuple(entry.bottom), tuple(entry.top), params)


def _layer_v1(entry: Any, path: Path) -> CaffeLayer:
    type_name = _enum_name(entry, "type")
    kind = _KINDS_V1.get(type_name, "other")
    params = _params(kind, _block(entry, _BLOCKS.get(kind)), entry.name, path)
    return CaffeLayer(entry.name, kind, type_name, tuple(entry.bottom), tuple(entry.top), params)


def _layer_v0(entry: Any, path: Path) -> CaffeLayer:
    inner = entry.layer
    kind = _KINDS_V0.get(inner.type, "other")
    nested = _FORK_BLOCKS.get(kind)
    if nested and inner.HasField(nested):  # SPP_net's modified Caffe: a nested block
        params = _params(kind, getattr(inner, nested), inner.name, path)
    else:
        params = _flat_v0_params(kind, inner, path)
    return CaffeLayer(inner.name, kind, inner.type, tuple(entry.bottom), tuple(entry.top), params)


def _block(entry: Any, field_name: str | None) -> Any:
    """ENTRY's settings block FIELD_NAME (defaults when unset), or None if it has no such field."""
    if field_name is None or field_name not in entry.DESCRIPTOR.fields_by_name:
        return None
    return getattr(entry, field_name)


def _enum_name(message: Any, field_name: str) -> str:
    enum = message.DESCRIPTOR.fields_by_name[field_name].enum_type
    return enum.values_by_number[getattr(message, field_name)].name


def _params(kind: str, block: Any, name: str, path: Path) -> Params:
    """A layer's settings from its V1/V2-style block (None: the kind's defaults)."""
    if kind == "conv":
        return _conv(block, name, path)
    if kind == "pool":
        return _pool(block, name, path)
    if kind == "lrn":
        return Lrn(
            _enum_name(block, "norm_region"), block.local_size, block.alpha, block.beta, block.k
        )
    if kind == "fc":
        return InnerProduct(block.num_output, block.bias_term, block.axis, block.transpose)
    if kind == "concat":
        return Concat(block.axis if block.HasField("axis") else block.concat_dim)
    if kind == "flatten":
        return Flatten(1, -1) if block is None else Flatten(block.axis, block.end_axis)
    if kind == "relu":
        return Relu(0.0) if block is None else Relu(block.negative_slope)
    return None


def _flat_v0_params(kind: str, inner: Any, path: Path) -> Params:
    """BVLC's V0: a layer's settings are fields of the layer block itself."""
    if kind in ("conv", "pool") and not inner.kernelsize:
        raise SppdetError(f"{path}: layer '{inner.name}' has no kernelsize ; fix the prototxt")
    size, stride, pad = inner.kernelsize, inner.stride, inner.pad
    if kind == "conv":
        square = (size, size), (stride, stride), (pad, pad)
        return Conv(inner.num_output, *square, (1, 1), inner.group, inner.biasterm)
    if kind == "pool":
        method = _enum_name(inner, "pool")
        return Pool(method, (size, size), (stride, stride), (pad, pad), True, False)
    if kind == "lrn":  # V0 normalised across channels only
        return Lrn("ACROSS_CHANNELS", inner.local_size, inner.alpha, inner.beta, inner.k)
    if kind == "fc":
        return InnerProduct(inner.num_output, inner.biasterm, 1, False)
    if kind == "concat":
        return Concat(inner.concat_dim)
    if kind == "padding":
        return Padding(pad)
    return _params(kind, None, inner.name, path) if kind in ("flatten", "relu") else None


def _conv(p: Any, name: str, path: Path) -> Conv:
    if p.HasField("kernel_h") or p.HasField("kernel_w"):
        kernel = (p.kernel_h, p.kernel_w)
    else:
        kernel = _pair(list(p.kernel_size), None, name, "kernel_size", path)
    if p.HasField("stride_h") or p.HasField("stride_w"):
        stride = (p.stride_h or 1, p.stride_w or 1)
    else:
        stride = _pair(list(p.stride), 1, name, "stride", path)
    if p.HasField("pad_h") or p.HasField("pad_w"):
        pad = (p.pad_h, p.pad_w)
    else:
        pad = _pair(list(p.pad), 0, name, "pad", path)
    dilation = _pair(list(p.dilation), 1, name, "dilation", path)
    return Conv(p.num_output, kernel, stride, pad, dilation, p.group, p.bias_term)


def _pool(p: Any, name: str, path: Path) -> Pool:
    method = _enum_name(p, "pool")
    ceil = p.round_mode == ROUND_MODES["CEIL"]
    if p.HasField("kernel_h") or p.HasField("kernel_w"):
        kernel = (p.kernel_h, p.kernel_w)
    elif p.HasField("kernel_size"):
        kernel = (p.kernel_size, p.kernel_size)
    elif p.global_pooling:
        kernel = (0, 0)  # the whole input
    else:
        raise SppdetError(f"{path}: pooling layer '{name}' has no kernel_size ; fix the prototxt")
    if p.HasField("stride_h") or p.HasField("stride_w"):
        stride = (p.stride_h or 1, p.stride_w or 1)
    else:
        stride = (p.stride, p.stride)
    if p.HasField("pad_h") or p.HasField("pad_w"):
        pad = (p.pad_h, p.pad_w)
    else:
        pad = (p.pad, p.pad)
    return Pool(method, kernel, stride, pad, ceil, p.global_pooling)


def _pair(values: list[int], default: int | None, name: str, what: str, path: Path) -> Pair:
    if not values:
        if default is None:
            raise SppdetError(f"{path}: layer '{name}' has no {what} ; fix the prototxt")
        return (default, default)
    if len(values) == 1:
        return (values[0], values[0])
    if len(values) == 2:
        return (values[0], values[1])
    raise SppdetError(
        f"{path}: layer '{name}' gives {len(values)} {what} values ; sppdet reads 2-D "
        "convolutions (one value, or height and width)"
    )
