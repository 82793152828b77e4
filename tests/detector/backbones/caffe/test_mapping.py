"""Tests of ``sppdet.detector.backbones.caffe.mapping``: a net is checked against the trunk layer by
layer, its pyramid found (or refused), and fc6's columns moved to sppdet's level order."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from sppdet.detector.backbones.caffe.mapping import (
    match_head,
    match_trunk,
    pool_output_size,
    sppdet_fc6,
)
from sppdet.detector.backbones.caffe.prototxt import Pool, read_prototxt
from sppdet.detector.core.errors import SppdetError
from tests.detector.backbones.caffe.shared import (
    ALEXNET_LRN,
    Layer,
    alexnet_net,
    fc_layers,
    lrn,
    net_message,
    pool,
    zf5_net,
    zf5_trunk,
)


def read(tmp_path: Path, layers: list[Layer], version: str = "V1", shape=(1, 3, 224, 224)):
    path = tmp_path / f"net-{version}.prototxt"
    path.write_text(str(net_message(layers, version, shape)))
    return read_prototxt(path)


def test_zf5_trunk_and_pyramid(tmp_path: Path) -> None:
    net = read(tmp_path, zf5_net((6, 3, 2, 1), 8), "V0")
    trunk = match_trunk(net, "zf5")
    assert trunk is not None and trunk.conv5_size == (13, 13)  # 224 -> 110 -> 55 -> 26 -> 13
    assert [(module, layer.name) for module, layer in trunk.convs] == [
        (f"conv{i}", f"conv{i}") for i in range(1, 6)
    ]
    assert net.layers[trunk.last].name == "relu5"
    head = match_head(net, trunk, "zf5")
    assert head is not None and (head.fc6.name, head.fc7.name) == ("fc6", "fc7")
    assert head.levels == (6, 3, 2, 1)


def test_alexnet_pool5_is_one_level(tmp_path: Path) -> None:
    net = read(tmp_path, alexnet_net(8), "V2", (1, 3, 227, 227))
    trunk = match_trunk(net, "caffe-alexnet")
    assert trunk is not None and trunk.conv5_size == (13, 13)
    head = match_head(net, trunk, "caffe-alexnet")
    assert head is not None and head.levels == (6,)


def test_an_fc_only_net_does_not_say_its_pyramid(tmp_path: Path) -> None:
    net = read(tmp_path, fc_layers("data", 12800, 8), "V0", (1, 12800, 1, 1))
    assert match_trunk(net, "zf5") is None
    head = match_head(net, None, "zf5")
    assert head is not None and head.levels is None


def alter(layers: list[Layer], name: str, **params) -> list[Layer]:
    for layer in layers:
        if layer.name == name:
            layer.params.update(params)
    return layers


@pytest.mark.parametrize(
    ("arch", "layers", "message"),
    [
        (
            "zf5",
            alter(zf5_trunk(), "norm2", alpha=1e-4),
            "layer 'norm2' is LRN within a channel, size 3, alpha 0.0001, beta 0.75, where ZF-5 "
            "has LRN within a channel, size 3, alpha 5e-05, beta 0.75 (norm2)",
        ),
        (
            "zf5",
            alter(zf5_trunk(), "conv3", out=512),
            "layer 'conv3' is a 3x3 convolution, stride 1, pad 1, 512 outputs, where ZF-5 has a "
            "3x3 convolution, stride 1, pad 1, 384 outputs (conv3)",
        ),
        (
            "caffe-alexnet",
            alter(alexnet_net(8), "conv4", group=1),
            "layer 'conv4' is a 3x3 convolution, stride 1, pad 1, 384 outputs, where AlexNet "
            "(Caffe) has a 3x3 convolution, stride 1, pad 1, 384 outputs, 2 groups (conv4)",
        ),
        (
            "caffe-alexnet",  # BVLC's bvlc_alexnet normalises before pooling
            alexnet_net(8)[:2] + [lrn("norm1", "conv1", ALEXNET_LRN), pool("pool1", "norm1", 3, 2)],
            "layer 'norm1' is LRN across channels, size 5, alpha 0.0001, beta 0.75, where AlexNet "
            "(Caffe) has 3x3 max pooling, stride 2 (pool1)",
        ),
        (
            "zf5",
            zf5_trunk()[:-1] + [pool("pool5", "conv5", 3, 2)],
            "layer 'pool5' is 3x3 max pooling, stride 2, where ZF-5 has a ReLU (relu5)",
        ),
        ("zf5", zf5_trunk()[:9], "the trunk stops after layer 'conv3', where ZF-5 goes on with a "),
    ],
    ids=["lrn-alpha", "outputs", "groups", "norm-before-pool", "no-relu5", "short"],
)
def test_the_first_differing_layer_is_named(tmp_path: Path, arch: str, layers, message) -> None:
    net = read(tmp_path, layers)
    with pytest.raises(SppdetError) as err:
        match_trunk(net, arch)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_v0_padding_layers_fold_into_the_next_convolution(tmp_path: Path) -> None:
    padding = 'layers { layer { name: "pad1" type: "padding" pad: 1 } bottom: "data" top: "p" }\n'
    for conv1_pad, ok in ((0, True), (1, False)):
        trunk = alter(zf5_trunk(), "conv1", pad=conv1_pad)
        trunk[0].bottoms = ["p"]
        text = str(net_message(trunk, "V0", (1, 3, 224, 224)))
        text = text.replace('input: "p"', 'input: "data"')
        path = tmp_path / f"padded{conv1_pad}.prototxt"
        path.write_text(text.replace("layers {", padding + "layers {", 1))
        net = read_prototxt(path)
        assert net.inputs == {"data": (1, 3, 224, 224)} and net.layers[0].kind == "padding"
        if ok:
            trunk_match = match_trunk(net, "zf5")
            assert trunk_match is not None and trunk_match.conv5_size == (13, 13)
        else:
            with pytest.raises(SppdetError, match="layer 'conv1' is a twice-padded convolution"):
                match_trunk(net, "zf5")


def square_pool(k: int, s: int, p: int) -> Pool:
    return Pool("MAX", (k, k), (s, s), (p, p), True, False)


def test_pool_output_size_is_caffes() -> None:
    def caffe(a: int, k: int, s: int, p: int) -> int:
        n = math.ceil((a + 2 * p - k) / s) + 1
        return n - 1 if p and (n - 1) * s >= a + p else n

    for a in range(3, 40):
        for k in (1, 2, 3, 5, 7):
            for s in (1, 2, 3, 4):
                for p in range(0, min(k, 3)):
                    if k > a + 2 * p:
                        continue
                    got = pool_output_size((a, a + 1), square_pool(k, s, p))
                    assert got == (caffe(a, k, s, p), caffe(a + 1, k, s, p))
    assert pool_output_size((5, 5), square_pool(2, 2, 1)) == (3, 3)  # the 4th would start in pad
    zf5_levels = {(3, 2): 6, (5, 4): 3, (7, 7): 2, (13, 13): 1}  # Zeiler_conv5.prototxt
    for (k, s), n in zf5_levels.items():
        assert pool_output_size((13, 13), square_pool(k, s, 0)) == (n, n)


def test_fc6_columns_move_by_whole_levels() -> None:
    channels, levels = 3, (6, 1, 3, 2)
    labels = []  # (level, channel, y, x) of each Caffe input, in Caffe's layout
    for n in levels:
        labels += [(n, c, y, x) for c in range(channels) for y in range(n) for x in range(n)]
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(4, len(labels)))
    moved, order = sppdet_fc6(weight, levels, channels)
    assert order == (1, 2, 3, 6)
    want = []  # sppdet's layout (SPEC.md): levels in order, c*n*n + y*n + x within a level
    for n in order:
        want += [(n, c, y, x) for c in range(channels) for y in range(n) for x in range(n)]
    columns = [labels.index(label) for label in want]
    assert np.array_equal(moved, weight[:, columns])
    identity, same = sppdet_fc6(weight, (1, 2, 3, 6), channels)
    assert same == (1, 2, 3, 6) and np.array_equal(identity, weight)


def pyramid_net(pools: list[Layer], flatten: bool = True) -> list[Layer]:
    layers = zf5_trunk() + pools
    tops = [p.tops[0] for p in pools]
    if flatten:
        layers += [Layer("flatten", f"{t}_f", [t], [f"{t}_flat"]) for t in tops]
        tops = [f"{t}_flat" for t in tops]
    layers.append(Layer("concat", "spm", tops, ["spm"], {"axis": 1}))
    return layers + fc_layers("spm", 256, 8)


@pytest.mark.parametrize(
    ("layers", "shape", "message"),
    [
        (
            pyramid_net([pool("a", "conv5", 3, 2), pool("b", "conv5", 4, 2)]),
            (1, 3, 224, 224),
            r"its levels \[6, 6\] repeat a size",
        ),
        (
            pyramid_net([pool("a", "conv5", 3, 2)]),
            (1, 3, 224, 300),
            "'a' makes 6x8 bins",
        ),
        (
            pyramid_net([pool("a", "conv4", 3, 2)]),
            (1, 3, 224, 224),
            "'a' does not pool the conv trunk",
        ),
        (
            pyramid_net([pool("a", "conv5", 3, 2)], flatten=False)[:-6]
            + [Layer("concat", "spm", ["a", "conv5"], ["spm"], {"axis": 1})]
            + fc_layers("spm", 256, 8),
            (1, 3, 224, 224),
            "a branch of its input comes from a ReLU",
        ),
        (pyramid_net([pool("a", "conv5", 3, 2)]), None, "no input size declared"),
    ],
    ids=["repeated", "not-square", "not-conv5", "not-pooled", "no-input-size"],
)
def test_unmappable_pyramids_are_refused(tmp_path: Path, layers, shape, message) -> None:
    net = read(tmp_path, layers, "V2", shape)
    with pytest.raises(SppdetError, match=message) as err:
        match_head(net, match_trunk(net, "zf5"), "zf5")
    assert "\n" not in str(err.value)


def test_fc7_must_read_fc6_through_a_relu(tmp_path: Path) -> None:
    head = [layer for layer in fc_layers("data", 12800, 8) if layer.name != "relu6"]
    net = read(tmp_path, head, "V1", (1, 12800, 1, 1))
    with pytest.raises(SppdetError, match="reads fc6 'fc6' without a ReLU"):
        match_head(net, None, "zf5")
    net = read(tmp_path, fc_layers("data", 12800, 8)[:3], "V1", (1, 12800, 1, 1))
    with pytest.raises(SppdetError, match="has no fc7 reading it"):
        match_head(net, None, "zf5")


def test_a_layer_sppdet_does_not_know_is_named_by_its_type(tmp_path: Path) -> None:
    path = tmp_path / "sigmoid.prototxt"
    path.write_text(
        'input: "data" input_dim: 1 input_dim: 3 input_dim: 224 input_dim: 224\n'
        'layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" '
        "convolution_param { num_output: 96 kernel_size: 7 stride: 2 pad: 1 } }\n"
        'layer { name: "sig1" type: "Sigmoid" bottom: "conv1" top: "conv1" }\n'
    )
    with pytest.raises(SppdetError, match="layer 'sig1' is a Sigmoid layer, where ZF-5 has a ReLU"):
        match_trunk(read_prototxt(path), "zf5")
