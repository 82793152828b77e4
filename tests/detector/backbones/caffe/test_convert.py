"""Tests of ``sppdet.detector.backbones.caffe.convert``: Caffe nets written in each layer format
with known random blobs convert into checkpoints whose trunk, window pooling and fc6/fc7 compute
what Caffe computes from those blobs (NumPy transcriptions in ``shared``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sppdet.detector.backbones.caffe.convert import NetFiles, convert_caffe
from sppdet.detector.backbones.caffe_alexnet import ILSVRC_2012_MEAN_BGR
from sppdet.detector.backbones.checkpoint import read_checkpoint
from sppdet.detector.backbones.weights import describe_weights, load_backbone
from sppdet.detector.core.errors import SppdetError
from sppdet.detector.heads.fc import FcHead
from sppdet.detector.spp.pooler import window_spp
from tests.detector.backbones.caffe.shared import (
    alexnet_net,
    caffe_fc7,
    caffe_forward,
    fc_layers,
    random_blobs,
    spm_pool,
    write_net,
    zf5_net,
    zf5_trunk,
)

WIDTH = 8  # fc6/fc7 outputs: small files; the converter takes any width


def caffe_input(image: np.ndarray, mean) -> np.ndarray:
    """What the Caffe code feeds the net: BGR, 0-255, minus the mean, [3, H, W]."""
    return image[:, :, ::-1].astype(np.float64).transpose(2, 0, 1) - np.asarray(mean)[:, None, None]


def windows(height: int, width: int) -> np.ndarray:
    """Cells x1 y1 x2 y2 (inclusive): the whole map, a few rectangles, one cell."""
    return np.array(
        [
            [0, 0, width - 1, height - 1],
            [1, 0, width - 2, height - 1],
            [0, 1, 2, height - 1],
            [width - 2, height - 2, width - 1, height - 1],
            [2, 1, 2, 1],
        ]
    )


def check_against_caffe(checkpoint: Path, arch: str, layers, blobs, levels, mean) -> None:
    """The converted trunk, SPP and fc6/fc7 against Caffe's computation on the same input."""
    backbone = load_backbone(arch, str(checkpoint))
    rng = np.random.default_rng(7)
    image = rng.integers(0, 256, (115, 141, 3), dtype=np.uint8)
    x = backbone.preprocessing(image)
    want_x = caffe_input(image, mean)
    assert np.allclose(x[0].double().numpy(), want_x, atol=1e-4)
    with torch.inference_mode():
        conv5 = backbone.trunk.eval()(x)[0]
    want5 = caffe_forward(layers, blobs, want_x)
    assert conv5.shape == want5.shape
    scale = np.abs(want5).max()
    assert scale > 1.0 and np.abs(conv5.double().numpy() - want5).max() < 1e-5 * scale
    cells = windows(*want5.shape[1:])
    pooled = window_spp(conv5, cells, backbone.head_pyramid)
    head = FcHead(pooled.shape[1], WIDTH, 2, dropout=0.0)
    head.load_state_dict(backbone.head_state(backbone.head_pyramid), strict=False)
    with torch.inference_mode():
        fc7 = head.features(pooled, "fc7").double().numpy()
    want7 = np.stack([caffe_fc7(spm_pool(want5, tuple(c), levels), blobs) for c in cells])
    assert np.abs(want7).max() > 1.0
    assert np.abs(fc7 - want7).max() < 1e-5 * np.abs(want7).max()


@pytest.mark.parametrize(
    ("version", "order"),
    [("V0", (1, 2, 3, 6)), ("V1", (6, 3, 2, 1)), ("V2", (2, 6, 1, 3))],
)
def test_zf5_computes_what_caffe_computes(tmp_path: Path, version: str, order) -> None:
    layers = zf5_net(order, WIDTH)
    blobs = random_blobs(layers, seed=1)
    prototxt, caffemodel = write_net(tmp_path, "zf5", layers, blobs, version)
    result = convert_caffe([NetFiles(prototxt, caffemodel)], "zf5", tmp_path / "zf5.pt")
    assert (result.arch, result.caffe_levels, result.pyramid) == ("zf5", order, (1, 2, 3, 6))
    assert result.fc_dim == WIDTH
    check_against_caffe(tmp_path / "zf5.pt", "zf5", layers, blobs, order, (128.0,) * 3)


@pytest.mark.parametrize("version", ["V0-flat", "V1", "V2"])
def test_caffe_alexnet_groups_and_cross_channel_lrn(tmp_path: Path, version: str) -> None:
    layers = alexnet_net(WIDTH)
    blobs = random_blobs(layers, seed=2)
    prototxt, caffemodel = write_net(tmp_path, "rcnn", layers, blobs, version, (1, 3, 227, 227))
    result = convert_caffe([NetFiles(prototxt, caffemodel)], "alexnet", tmp_path / "a.pt")
    assert (result.arch, result.caffe_levels, result.pyramid) == ("caffe-alexnet", (6,), (6,))
    mean = ILSVRC_2012_MEAN_BGR
    check_against_caffe(tmp_path / "a.pt", "caffe-alexnet", layers, blobs, (6,), mean)


def test_spp_net_split_nets_take_the_pyramid_given(tmp_path: Path) -> None:
    """SPP_net ships the trunk and the fc layers (input: the 12,800-d pooled vector) apart."""
    trunk, head = zf5_trunk(), fc_layers("data", 12800, WIDTH)
    blobs = random_blobs(trunk + head, seed=3)
    nets = [
        NetFiles(*write_net(tmp_path, "conv", trunk, blobs, "V0")),
        NetFiles(*write_net(tmp_path, "fc", head, blobs, "V0", (1, 12800, 1, 1))),
    ]
    with pytest.raises(SppdetError, match="--pyramid") as err:
        convert_caffe(nets, "zf5", tmp_path / "x.pt")
    assert "\n" not in str(err.value) and not (tmp_path / "x.pt").exists()
    order = (6, 3, 2, 1)
    result = convert_caffe(nets, "zf5", tmp_path / "zf5.pt", pyramid=order)
    assert result.trunk_from == nets[0] and result.head_from == nets[1]
    assert result.pyramid == (1, 2, 3, 6)
    check_against_caffe(tmp_path / "zf5.pt", "zf5", trunk, blobs, order, (128.0,) * 3)
    with pytest.raises(SppdetError, match="fc6 'fc6' reads 12800 values, pyramid 1,2,3 of 256"):
        convert_caffe(nets, "zf5", tmp_path / "y.pt", pyramid=(1, 2, 3))


def test_a_later_pair_replaces_the_fc_layers(tmp_path: Path) -> None:
    full = zf5_net((1, 2, 3, 6), WIDTH)
    imagenet = random_blobs(full, seed=4)
    tuned_layers = fc_layers("data", 12800, WIDTH)
    tuned = random_blobs(tuned_layers, seed=5)
    nets = [
        NetFiles(*write_net(tmp_path, "full", full, imagenet, "V1")),
        NetFiles(*write_net(tmp_path, "ft", tuned_layers, tuned, "V1", (1, 12800, 1, 1))),
    ]
    convert_caffe(nets, "zf5", tmp_path / "zf5.pt", pyramid=(1, 2, 3, 6))
    record = read_checkpoint(tmp_path / "zf5.pt", "zf5")
    assert np.array_equal(record["head"]["fc7.weight"].numpy(), tuned["fc7"][0])
    assert np.array_equal(record["trunk"]["conv2.weight"].numpy(), imagenet["conv2"][0])
    with pytest.raises(SppdetError, match="leave --pyramid out"):
        convert_caffe(nets[:1], "zf5", tmp_path / "z.pt", pyramid=(6, 3, 2, 1))


def test_checkpoint_is_a_normal_backbone_checkpoint(tmp_path: Path) -> None:
    layers = zf5_net((1, 2, 3, 6), WIDTH)
    blobs = random_blobs(layers, seed=6)
    nets = [NetFiles(*write_net(tmp_path, "zf5", layers, blobs, "V2"))]
    first = convert_caffe(nets, "zf5", tmp_path / "1" / "zf5.pt", mean="100,110,120").out
    again = convert_caffe(nets, "zf5", tmp_path / "2" / "zf5.pt", mean="100,110,120").out
    assert first.read_bytes() == again.read_bytes()  # same inputs, same file (fingerprints)
    record = read_checkpoint(first, "zf5")
    assert record["format"] == "sppdet-backbone" and record["head_pyramid"] == [1, 2, 3, 6]
    pre = record["preprocessing"]
    assert (pre.mean, pre.std, pre.channel_order, pre.pixel_range) == (
        (100.0, 110.0, 120.0),
        (1.0, 1.0, 1.0),
        "BGR",
        255.0,
    )
    assert "zf5.caffemodel" in record["source"] and str(tmp_path) not in record["source"]
    weights_id, described = describe_weights("zf5", str(first))
    assert weights_id.startswith("file:") and described == pre
    assert set(record["trunk"]) == set(load_backbone("zf5").trunk.features.state_dict())


def test_a_trunk_only_net_gives_a_checkpoint_without_head(tmp_path: Path) -> None:
    trunk = zf5_trunk()
    nets = [NetFiles(*write_net(tmp_path, "conv", trunk, random_blobs(trunk, 8), "V1"))]
    result = convert_caffe(nets, "zf5", tmp_path / "t.pt")
    assert result.head_from is None and result.pyramid is None
    assert load_backbone("zf5", str(result.out)).head is None
    with pytest.raises(SppdetError, match="no fc6 was converted"):
        convert_caffe(nets, "zf5", tmp_path / "u.pt", pyramid=(1, 2, 3, 6))


def test_fc_without_bias_and_with_transposed_weights(tmp_path: Path) -> None:
    """InnerProduct's bias_term: false (zero bias) and transpose: true ([inputs, outputs])."""
    layers = zf5_net((1, 2, 3, 6), WIDTH)
    for layer in layers:
        if layer.name == "fc6":
            layer.params["bias"] = False
        if layer.name == "fc7":
            layer.params["transpose"] = True
    blobs = random_blobs(layers, seed=10)
    assert len(blobs["fc6"]) == 1
    nets = [NetFiles(*write_net(tmp_path, "zf5", layers, blobs, "V2"))]
    convert_caffe(nets, "zf5", tmp_path / "zf5.pt")
    head = read_checkpoint(tmp_path / "zf5.pt", "zf5")["head"]
    assert torch.equal(head["fc6.bias"], torch.zeros(WIDTH))
    assert np.array_equal(head["fc7.weight"].numpy(), blobs["fc7"][0])
    blobs["fc6"].append(np.zeros(WIDTH, np.float32))  # Caffe's computation: no bias term
    check_against_caffe(tmp_path / "zf5.pt", "zf5", layers, blobs, (1, 2, 3, 6), (128.0,) * 3)


def test_missing_blobs_and_wrong_shapes_are_named(tmp_path: Path) -> None:
    layers = zf5_net((1, 2, 3, 6), WIDTH)
    blobs = random_blobs(layers, seed=9)
    del blobs["conv3"]
    nets = [NetFiles(*write_net(tmp_path, "a", layers, blobs, "V1"))]
    with pytest.raises(SppdetError, match=r"layer 'conv3' has 0 of its 2 blobs"):
        convert_caffe(nets, "zf5", tmp_path / "a.pt")
    blobs = random_blobs(layers, seed=9)
    blobs["fc7"][1] = blobs["fc7"][1][:5]
    nets = [NetFiles(*write_net(tmp_path, "b", layers, blobs, "V2"))]
    with pytest.raises(SppdetError, match=r"layer 'fc7' bias are 5, the net needs 8"):
        convert_caffe(nets, "zf5", tmp_path / "b.pt")


def test_a_net_of_another_arch_is_refused(tmp_path: Path) -> None:
    layers = alexnet_net(WIDTH)
    nets = [NetFiles(*write_net(tmp_path, "rcnn", layers, random_blobs(layers, 1), "V1"))]
    with pytest.raises(SppdetError) as err:
        convert_caffe(nets, "zf5", tmp_path / "a.pt")
    message = str(err.value)
    assert "\n" not in message
    assert "layer 'conv1' is a 11x11 convolution, stride 4, pad 0, 96 outputs" in message
    assert "ZF-5 has a 7x7 convolution, stride 2, pad 1, 96 outputs (conv1)" in message
    with pytest.raises(SppdetError, match="--arch resnet50: convert-caffe reads zf5 or alexnet"):
        convert_caffe(nets, "resnet50", tmp_path / "a.pt")
