"""Small Caffe nets written with the protobuf schema in each layer format, protobuf bytes encoded
by hand, and NumPy transcriptions of what Caffe computes from a net's blobs (the references the
converted checkpoints must match).

A net is a list of ``Layer`` records; ``write_net`` writes it as a prototxt (text) and a
caffemodel (binary, the definition plus blobs) in format V0 (SPP_net's nested blocks), V0-flat
(BVLC's V0), V1 or V2. ``random_blobs`` keeps weights in V2's [outputs, inputs] layout whatever
the file stores.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf import text_format

from sppdet.detector.backbones.caffe.schema import NetParameter

VERSIONS = ("V0", "V0-flat", "V1", "V2")
ZF5_LRN = {"size": 3, "alpha": 5e-5, "beta": 0.75, "region": "WITHIN_CHANNEL"}
ALEXNET_LRN = {"size": 5, "alpha": 1e-4, "beta": 0.75, "region": "ACROSS_CHANNELS"}
# Zeiler_conv5.prototxt's pyramid on the 13x13 conv5 of a 224 input: level -> (kernel, stride)
ZF5_SPM_POOLS = {6: (3, 2), 3: (5, 4), 2: (7, 7), 1: (13, 13)}


@dataclass
class Layer:
    kind: str  # conv relu lrn pool flatten concat fc dropout
    name: str
    bottoms: list[str]
    tops: list[str]
    params: dict[str, Any] = field(default_factory=dict)


def conv(name: str, bottom: str, inputs: int, outputs: int, k: int, s=1, p=0, g=1) -> Layer:
    params = {"in": inputs, "out": outputs, "kernel": k, "stride": s, "pad": p, "group": g}
    return Layer("conv", name, [bottom], [name], params)


def relu(name: str, blob: str) -> Layer:
    return Layer("relu", name, [blob], [blob])


def pool(name: str, bottom: str, k: int, s: int) -> Layer:
    return Layer("pool", name, [bottom], [name], {"kernel": k, "stride": s})


def lrn(name: str, bottom: str, settings: dict[str, Any]) -> Layer:
    return Layer("lrn", name, [bottom], [name], dict(settings))


def fc(name: str, bottom: str, inputs: int, outputs: int) -> Layer:
    return Layer("fc", name, [bottom], [name], {"in": inputs, "out": outputs})


def zf5_trunk() -> list[Layer]:
    """Zeiler_conv5.prototxt's conv1..relu5."""
    return [
        conv("conv1", "data", 3, 96, 7, 2, 1),
        relu("relu1", "conv1"),
        lrn("norm1", "conv1", ZF5_LRN),
        pool("pool1", "norm1", 3, 2),
        conv("conv2", "pool1", 96, 256, 5, 2, 0),
        relu("relu2", "conv2"),
        lrn("norm2", "conv2", ZF5_LRN),
        pool("pool2", "norm2", 3, 2),
        conv("conv3", "pool2", 256, 384, 3, 1, 1),
        relu("relu3", "conv3"),
        conv("conv4", "conv3", 384, 384, 3, 1, 1),
        relu("relu4", "conv4"),
        conv("conv5", "conv4", 384, 256, 3, 1, 1),
        relu("relu5", "conv5"),
    ]


def fc_layers(bottom: str, inputs: int, width: int) -> list[Layer]:
    """fc6, relu6, drop6, fc7, relu7, drop7 as SPP_net and R-CNN write them."""
    return [
        fc("fc6", bottom, inputs, width),
        relu("relu6", "fc6"),
        Layer("dropout", "drop6", ["fc6"], ["fc6"]),
        fc("fc7", "fc6", width, width),
        relu("relu7", "fc7"),
        Layer("dropout", "drop7", ["fc7"], ["fc7"]),
    ]


def zf5_net(order: tuple[int, ...], width: int) -> list[Layer]:
    """Zeiler_conv5.prototxt's shape: the trunk, one max pooling + flatten per level of ORDER
    on conv5, their concatenation, fc6 (WIDTH outputs), fc7."""
    layers = zf5_trunk()
    for n in order:
        k, s = ZF5_SPM_POOLS[n]
        layers += [
            pool(f"pool5_spm{n}", "conv5", k, s),
            Layer("flatten", f"pool5_spm{n}_flatten", [f"pool5_spm{n}"], [f"spm{n}_flat"]),
        ]
    layers.append(
        Layer("concat", "pool5_spm", [f"spm{n}_flat" for n in order], ["pool5_spm"], {"axis": 1})
    )
    return layers + fc_layers("pool5_spm", 256 * sum(n * n for n in order), width)


def alexnet_net(width: int) -> list[Layer]:
    """R-CNN's rcnn_batch_256_output_fc7.prototxt shape (CaffeNet): pool before norm."""
    return [
        conv("conv1", "data", 3, 96, 11, 4, 0),
        relu("relu1", "conv1"),
        pool("pool1", "conv1", 3, 2),
        lrn("norm1", "pool1", ALEXNET_LRN),
        conv("conv2", "norm1", 96, 256, 5, 1, 2, g=2),
        relu("relu2", "conv2"),
        pool("pool2", "conv2", 3, 2),
        lrn("norm2", "pool2", ALEXNET_LRN),
        conv("conv3", "norm2", 256, 384, 3, 1, 1),
        relu("relu3", "conv3"),
        conv("conv4", "conv3", 384, 384, 3, 1, 1, g=2),
        relu("relu4", "conv4"),
        conv("conv5", "conv4", 384, 256, 3, 1, 1, g=2),
        relu("relu5", "conv5"),
        pool("pool5", "conv5", 3, 2),
    ] + fc_layers("pool5", 256 * 36, width)


def random_blobs(layers: list[Layer], seed: int) -> dict[str, list[np.ndarray]]:
    """He-scaled random weights and small random biases, in V2 shapes, per conv and fc."""
    rng = np.random.default_rng(seed)
    blobs = {}
    for layer in layers:
        p = layer.params
        if layer.kind == "conv":
            shape = (p["out"], p["in"] // p["group"], p["kernel"], p["kernel"])
        elif layer.kind == "fc":
            shape = (p["out"], p["in"])
        else:
            continue
        fan_in = int(np.prod(shape[1:]))
        weight = rng.normal(0.0, math.sqrt(2.0 / fan_in), shape).astype(np.float32)
        bias = rng.normal(0.0, 0.1, shape[0]).astype(np.float32)
        blobs[layer.name] = [weight, bias] if p.get("bias", True) else [weight]
    return blobs


# ---------------------------------------------------------------- writing the files

_V1_TYPES = {
    "conv": "CONVOLUTION",
    "relu": "RELU",
    "lrn": "LRN",
    "pool": "POOLING",
    "flatten": "FLATTEN",
    "concat": "CONCAT",
    "fc": "INNER_PRODUCT",
    "dropout": "DROPOUT",
}
_V2_TYPES = {
    "conv": "Convolution",
    "relu": "ReLU",
    "lrn": "LRN",
    "pool": "Pooling",
    "flatten": "Flatten",
    "concat": "Concat",
    "fc": "InnerProduct",
    "dropout": "Dropout",
}
_V0_TYPES = {
    "conv": "conv",
    "relu": "relu",
    "lrn": "lrn",
    "pool": "pool",
    "flatten": "flatten",
    "concat": "concat",
    "fc": "inner_product",
    "dropout": "dropout",
}


def write_net(
    folder: Path,
    stem: str,
    layers: list[Layer],
    blobs: dict[str, list[np.ndarray]],
    version: str,
    input_shape: tuple[int, ...] | None = (1, 3, 224, 224),
) -> tuple[Path, Path]:
    """STEM.prototxt and STEM.caffemodel in FOLDER: LAYERS in VERSION's format, the caffemodel
    holding BLOBS (V2 shapes; legacy formats get num/channels/height/width)."""
    definition = net_message(layers, version, input_shape)
    prototxt = folder / f"{stem}.prototxt"
    prototxt.write_text(text_format.MessageToString(definition))
    trained = net_message(layers, version, input_shape)
    entries = trained.layer if version == "V2" else trained.layers
    for layer, entry in zip(layers, entries, strict=True):
        target = entry.layer if version.startswith("V0") else entry
        stored = list(blobs.get(layer.name, []))
        if stored and layer.params.get("transpose"):  # V2 InnerProduct keeping [in, out]
            stored[0] = stored[0].T.copy()
        for array in stored:
            _fill_blob(target.blobs.add(), array, legacy=version != "V2")
    caffemodel = folder / f"{stem}.caffemodel"
    caffemodel.write_bytes(trained.SerializeToString())
    return prototxt, caffemodel


def net_message(layers: list[Layer], version: str, input_shape: tuple[int, ...] | None) -> Any:
    net = NetParameter(name="test")
    if input_shape is not None:
        net.input.append(layers[0].bottoms[0])
        if version == "V2":
            net.input_shape.add().dim.extend(input_shape)
        else:
            net.input_dim.extend(input_shape)
    for layer in layers:
        if version == "V2":
            entry = net.layer.add(name=layer.name, type=_V2_TYPES[layer.kind])
            entry.bottom.extend(layer.bottoms)
            entry.top.extend(layer.tops)
            _v12_params(entry, layer)
        elif version == "V1":
            entry = net.layers.add(name=layer.name)
            entry.type = (
                entry.DESCRIPTOR.fields_by_name["type"]
                .enum_type.values_by_name[_V1_TYPES[layer.kind]]
                .number
            )
            entry.bottom.extend(layer.bottoms)
            entry.top.extend(layer.tops)
            _v12_params(entry, layer)
        else:
            entry = net.layers.add()
            entry.bottom.extend(layer.bottoms)
            entry.top.extend(layer.tops)
            inner = entry.layer
            inner.name, inner.type = layer.name, _V0_TYPES[layer.kind]
            if version == "V0":
                _v0_nested_params(inner, layer)
            else:
                _v0_flat_params(inner, layer)
    return net


def _v12_params(entry: Any, layer: Layer) -> None:
    p = layer.params
    if layer.kind == "conv":
        c = entry.convolution_param
        c.num_output, c.group = p["out"], p["group"]
        c.kernel_size.append(p["kernel"])
        c.stride.append(p["stride"])
        c.pad.append(p["pad"])
    elif layer.kind == "pool":
        entry.pooling_param.kernel_size = p["kernel"]
        entry.pooling_param.stride = p["stride"]
    elif layer.kind == "lrn":
        _lrn_block(entry.lrn_param, p)
    elif layer.kind == "fc":
        entry.inner_product_param.num_output = p["out"]
        entry.inner_product_param.bias_term = p.get("bias", True)
        entry.inner_product_param.transpose = p.get("transpose", False)
    elif layer.kind == "concat":
        entry.concat_param.axis = p["axis"]


def _v0_nested_params(inner: Any, layer: Layer) -> None:
    """SPP_net's modified Caffe: conv_param, pool_param, lrn_param... inside the V0 layer."""
    p = layer.params
    if layer.kind == "conv":
        c = inner.conv_param
        c.num_output, c.group = p["out"], p["group"]
        c.kernel_size.append(p["kernel"])
        c.stride.append(p["stride"])
        c.pad.append(p["pad"])
    elif layer.kind == "pool":
        inner.pool_param.kernel_size = p["kernel"]
        inner.pool_param.stride = p["stride"]
    elif layer.kind == "lrn":
        _lrn_block(inner.lrn_param, p)
    elif layer.kind == "fc":
        inner.inner_product_param.num_output = p["out"]
    elif layer.kind == "concat":
        inner.concat_param.concat_dim = p["axis"]


def _v0_flat_params(inner: Any, layer: Layer) -> None:
    """BVLC's V0: the settings are fields of the layer (across-channel LRN only)."""
    p = layer.params
    if layer.kind == "conv":
        inner.num_output, inner.kernelsize = p["out"], p["kernel"]
        inner.stride, inner.pad, inner.group = p["stride"], p["pad"], p["group"]
    elif layer.kind == "pool":
        inner.kernelsize, inner.stride = p["kernel"], p["stride"]
    elif layer.kind == "lrn":
        assert p["region"] == "ACROSS_CHANNELS"
        inner.local_size, inner.alpha, inner.beta = p["size"], p["alpha"], p["beta"]
    elif layer.kind == "fc":
        inner.num_output = p["out"]
    elif layer.kind == "concat":
        inner.concat_dim = p["axis"]


def _lrn_block(block: Any, p: dict[str, Any]) -> None:
    block.local_size, block.alpha, block.beta = p["size"], p["alpha"], p["beta"]
    region = block.DESCRIPTOR.fields_by_name["norm_region"].enum_type
    block.norm_region = region.values_by_name[p["region"]].number


def _fill_blob(blob: Any, array: np.ndarray, legacy: bool) -> None:
    if legacy:  # num/channels/height/width, the shape right-aligned as old Caffe stores it
        dims = (1,) * (4 - array.ndim) + array.shape
        blob.num, blob.channels, blob.height, blob.width = dims
    else:
        blob.shape.dim.extend(array.shape)
    blob.data.extend(array.ravel().tolist())


# ---------------------------------------------------------------- protobuf bytes by hand

VARINT, FIXED32, LENGTH = 0, 5, 2  # wire types


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def key(number: int, wire: int) -> bytes:
    return varint(number << 3 | wire)


def num(number: int, value: int) -> bytes:
    return key(number, VARINT) + varint(value)


def f32(number: int, value: float) -> bytes:
    return key(number, FIXED32) + struct.pack("<f", value)


def sub(number: int, *parts: bytes) -> bytes:
    body = b"".join(parts)
    return key(number, LENGTH) + varint(len(body)) + body


def text(number: int, value: str) -> bytes:
    return sub(number, value.encode())


# ---------------------------------------------------------------- what Caffe computes


def caffe_conv(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, stride: int, pad: int):
    """[C, H, W] -> [O, H', W'], grouped when weight has C / groups input channels."""
    groups = x.shape[0] // weight.shape[1]
    k = weight.shape[2]
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (k, k), axis=(1, 2))
    windows = windows[:, ::stride, ::stride]  # [C, H', W', k, k]
    per_group = weight.shape[0] // groups
    outs = []
    for g in range(groups):
        part = windows[g * weight.shape[1] : (g + 1) * weight.shape[1]]
        w = weight[g * per_group : (g + 1) * per_group]
        outs.append(np.einsum("chwij,ocij->ohw", part, w))
    return np.concatenate(outs) + bias[:, None, None]


def caffe_max_pool(x: np.ndarray, k: int, s: int) -> np.ndarray:
    """Caffe's MAX pooling without padding: ceil((H - k) / s) + 1 outputs, the last window
    cut at the map's edge."""
    height, width = x.shape[1:]
    rows, cols = math.ceil((height - k) / s) + 1, math.ceil((width - k) / s) + 1
    out = np.empty((x.shape[0], rows, cols), x.dtype)
    for i in range(rows):
        for j in range(cols):
            out[:, i, j] = x[:, i * s : min(i * s + k, height), j * s : min(j * s + k, width)].max(
                axis=(1, 2)
            )
    return out


def caffe_lrn(x: np.ndarray, size: int, alpha: float, beta: float, region: str) -> np.ndarray:
    """ACROSS_CHANNELS: x / (1 + alpha/size * sum of x^2 over SIZE channels)^beta;
    WITHIN_CHANNEL: x / (1 + alpha/size^2 * sum of x^2 over a SIZE x SIZE square)^beta; zero
    padding in both."""
    half = size // 2
    sq = x * x
    if region == "ACROSS_CHANNELS":
        padded = np.pad(sq, ((half, half), (0, 0), (0, 0)))
        total = sum(padded[i : i + x.shape[0]] for i in range(size))
        return x * (1.0 + alpha / size * total) ** -beta
    padded = np.pad(sq, ((0, 0), (half, half), (half, half)))
    h, w = x.shape[1:]
    total = sum(padded[:, i : i + h, j : j + w] for i in range(size) for j in range(size))
    return x * (1.0 + alpha / (size * size) * total) ** -beta


def caffe_forward(layers: list[Layer], blobs: dict[str, list[np.ndarray]], image: np.ndarray):
    """Run the conv part of LAYERS (up to relu5) on IMAGE [3, H, W] in float64; -> conv5."""
    x = image.astype(np.float64)
    for layer in layers:
        p = layer.params
        if layer.kind == "conv":
            w, b = (a.astype(np.float64) for a in blobs[layer.name])
            x = caffe_conv(x, w, b, p["stride"], p["pad"])
        elif layer.kind == "relu":
            x = np.maximum(x, 0.0)
        elif layer.kind == "lrn":
            x = caffe_lrn(x, p["size"], p["alpha"], p["beta"], p["region"])
        elif layer.kind == "pool":
            x = caffe_max_pool(x, p["kernel"], p["stride"])
        if layer.name == "relu5":
            return x
    raise AssertionError("no relu5")


def spm_pool(conv5: np.ndarray, box: tuple[int, int, int, int], levels) -> np.ndarray:
    """The pooled vector of one window (inclusive cells x1 y1 x2 y2) as spm_pool_caffe_mex
    lays it out: LEVELS in the order given; inside a level, channel d of bin (yy, xx) at
    d*n*n + yy*n + xx; bin rows from floor(yy/n * h) to ceil((yy+1)/n * h)."""
    x1, y1, x2, y2 = box
    h, w = y2 - y1 + 1, x2 - x1 + 1
    parts = []
    for n in levels:
        level = np.empty((conv5.shape[0], n * n))
        for yy in range(n):
            ys, ye = y1 + math.floor(yy / n * h), y1 + math.ceil((yy + 1) / n * h)
            for xx in range(n):
                xs, xe = x1 + math.floor(xx / n * w), x1 + math.ceil((xx + 1) / n * w)
                level[:, yy * n + xx] = conv5[:, ys:ye, xs:xe].max(axis=(1, 2))
        parts.append(level.reshape(-1))
    return np.concatenate(parts)


def caffe_fc7(pooled: np.ndarray, blobs: dict[str, list[np.ndarray]]) -> np.ndarray:
    """relu(fc7(relu(fc6(pooled)))) with Caffe's [outputs, inputs] weights."""
    w6, b6 = blobs["fc6"]
    w7, b7 = blobs["fc7"]
    fc6 = np.maximum(w6.astype(np.float64) @ pooled + b6, 0.0)
    return np.maximum(w7.astype(np.float64) @ fc6 + b7, 0.0)
