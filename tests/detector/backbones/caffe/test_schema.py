"""Tests of ``sppdet.detector.backbones.caffe.schema``: bytes encoded by hand with caffe.proto's
field numbers (BVLC/caffe, src/caffe/proto/caffe.proto) decode into the settings they say."""

from __future__ import annotations

import struct
from pathlib import Path

from sppdet.detector.backbones.caffe.prototxt import (
    Concat,
    Conv,
    InnerProduct,
    Lrn,
    Pool,
    net_from_message,
)
from sppdet.detector.backbones.caffe.schema import NetParameter
from tests.detector.backbones.caffe.shared import f32, num, sub, text


def parse(data: bytes):
    message = NetParameter()
    message.ParseFromString(data)
    return net_from_message(message, Path("hand.prototxt"))


def test_v2_layer_fields() -> None:
    data = (
        text(3, "data")  # NetParameter.input
        + sub(8, num(1, 1), num(1, 3), num(1, 224), num(1, 224))  # input_shape (unpacked dims)
        + sub(100, text(1, "c"), text(2, "Convolution"), text(3, "data"), text(4, "c"),
              sub(106, num(1, 96), num(3, 1), num(4, 7), num(5, 2), num(6, 2)))
        + sub(100, text(1, "p"), text(2, "Pooling"), text(3, "c"), text(4, "p"),
              sub(121, num(1, 0), num(2, 3), num(3, 2), num(13, 1)))
        + sub(100, text(1, "n"), text(2, "LRN"), text(3, "p"), text(4, "n"),
              sub(118, num(1, 3), f32(2, 5e-5), f32(3, 0.75), num(4, 1), f32(5, 2.0)))
        + sub(100, text(1, "f"), text(2, "InnerProduct"), text(3, "n"), text(4, "f"),
              sub(117, num(1, 4096), num(2, 0), num(6, 1)))
        + sub(100, text(1, "k"), text(2, "Concat"), text(3, "f"), text(4, "k"), sub(104, num(2, 3)))
    )  # fmt: skip
    net = parse(data)
    assert net.version == "V2" and net.inputs == {"data": (1, 3, 224, 224)}
    c, p, n, f, k = (layer.params for layer in net.layers)
    assert c == Conv(96, (7, 7), (2, 2), (1, 1), (1, 1), 2, True)
    assert p == Pool("MAX", (3, 3), (2, 2), (0, 0), False, False)  # round_mode FLOOR
    assert n.region == "WITHIN_CHANNEL" and (n.size, n.beta, n.k) == (3, 0.75, 2.0)
    assert n.alpha == struct.unpack("<f", struct.pack("<f", 5e-5))[0]  # a float field
    assert f == InnerProduct(4096, False, 1, True)
    assert k == Concat(3)
    assert [layer.bottoms for layer in net.layers][:2] == [("data",), ("c",)]


def test_v1_layer_fields() -> None:
    data = (
        text(3, "data") + num(4, 10) + num(4, 3) + num(4, 227) + num(4, 227)  # input, input_dim
        + sub(2, text(2, "data"), text(3, "conv1"), text(4, "conv1"), num(5, 4),  # CONVOLUTION
              sub(10, num(1, 256), num(3, 2), num(4, 5), num(5, 2)))
        + sub(2, text(2, "conv1"), text(3, "pool1"), text(4, "pool1"), num(5, 17),  # POOLING
              sub(19, num(2, 3), num(3, 2)))
        + sub(2, text(2, "pool1"), text(3, "norm1"), text(4, "norm1"), num(5, 15),  # LRN
              sub(18, num(1, 5), f32(2, 1e-4)))
        + sub(2, text(2, "norm1"), text(3, "fc6"), text(4, "fc6"), num(5, 14),  # INNER_PRODUCT
              sub(17, num(1, 8)))
        + sub(2, text(2, "fc6"), text(3, "fc6"), text(4, "relu6"), num(5, 18))  # RELU
    )  # fmt: skip
    net = parse(data)
    assert net.version == "V1" and net.inputs == {"data": (10, 3, 227, 227)}
    assert [layer.kind for layer in net.layers] == ["conv", "pool", "lrn", "fc", "relu"]
    conv, pool, lrn, fc, _ = (layer.params for layer in net.layers)
    assert conv == Conv(256, (5, 5), (1, 1), (2, 2), (1, 1), 2, True)
    assert pool == Pool("MAX", (3, 3), (2, 2), (0, 0), True, False)
    assert isinstance(lrn, Lrn) and lrn.region == "ACROSS_CHANNELS" and lrn.size == 5
    assert (lrn.beta, lrn.k) == (0.75, 1.0)  # caffe.proto's defaults
    assert fc == InnerProduct(8, True, 1, False)


def test_v0_layer_fields() -> None:
    """BVLC's V0: a V1 entry whose field 1 holds the layer, settings flat in it."""
    data = sub(
        2,
        sub(1, text(1, "conv2"), text(2, "conv"), num(3, 256), num(4, 0), num(7, 2), num(8, 5),
            num(9, 2), num(10, 1)),
        text(2, "norm1"),
        text(3, "conv2"),
    ) + sub(
        2,
        sub(1, text(1, "pool2"), text(2, "pool"), num(8, 3), num(10, 2), num(11, 1)),
        text(2, "conv2"),
        text(3, "pool2"),
    ) + sub(
        2,
        sub(1, text(1, "norm2"), text(2, "lrn"), num(13, 5), f32(14, 1e-4), f32(15, 0.5),
            f32(22, 2.0)),
        text(2, "pool2"),
        text(3, "norm2"),
    )  # fmt: skip
    net = parse(data)
    assert net.version == "V0"
    conv, pool, lrn = (layer.params for layer in net.layers)
    assert conv == Conv(256, (5, 5), (1, 1), (2, 2), (1, 1), 2, False)
    assert pool == Pool("AVE", (3, 3), (2, 2), (0, 0), True, False)
    assert (lrn.region, lrn.size, lrn.beta, lrn.k) == ("ACROSS_CHANNELS", 5, 0.5, 2.0)
    assert net.layers[0].bottoms == ("norm1",) and net.layers[0].tops == ("conv2",)
