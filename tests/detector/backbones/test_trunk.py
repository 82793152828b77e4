"""Tests of ``sppdet.detector.backbones.trunk``.

Backbones: ZF-5 shapes and LRN, torchvision trunks, preprocessing, weights and checkpoints.
"""

from __future__ import annotations

import math

import pytest
import torch
import torchvision

from sppdet.detector.backbones.checkpoint import read_checkpoint, save_backbone_checkpoint
from sppdet.detector.backbones.preprocessing import TORCHVISION_PREPROCESSING, Preprocessing
from sppdet.detector.backbones.trunk import ZF5_PREPROCESSING, build_trunk
from sppdet.detector.backbones.weights import describe_weights, load_backbone
from sppdet.detector.backbones.zf5 import WithinChannelLRN
from sppdet.detector.core.errors import SppdetError


def caffe_zf5_side(a: int) -> int:
    """conv5 side from the layer list with Caffe's rules: conv floors, pooling ceils."""
    a = (a + 2 * 1 - 7) // 2 + 1  # conv1 7x7 s2 p1
    a = math.ceil((a - 3) / 2) + 1  # pool1 3 s2
    a = (a - 5) // 2 + 1  # conv2 5x5 s2 p0
    return math.ceil((a - 3) / 2) + 1  # pool2 3 s2; conv3-5 keep the size


def test_zf5_map_sizes():
    trunk = build_trunk("zf5").eval()
    assert caffe_zf5_side(224) == 13
    with torch.inference_mode():
        for h, w in ((224, 224), (100, 160), (225, 301), (375, 500)):
            out = trunk(torch.randn(1, 3, h, w))
            assert out.shape == (1, 256, caffe_zf5_side(h), caffe_zf5_side(w))
    assert trunk(torch.randn(1, 3, 224, 224)).shape[-2:] == (13, 13)


def test_zf5_layers_are_the_specified_ones():
    f = build_trunk("zf5").features
    convs = [
        (m.out_channels, m.kernel_size[0], m.stride[0], m.padding[0])
        for m in f
        if isinstance(m, torch.nn.Conv2d)
    ]
    assert convs == [(96, 7, 2, 1), (256, 5, 2, 0), (384, 3, 1, 1), (384, 3, 1, 1), (256, 3, 1, 1)]
    pools = [m for m in f if isinstance(m, torch.nn.MaxPool2d)]
    assert [(p.kernel_size, p.stride, p.ceil_mode) for p in pools] == [(3, 2, True)] * 2
    assert isinstance(f.norm1, WithinChannelLRN) and isinstance(f.norm2, WithinChannelLRN)
    assert isinstance(f[-1], torch.nn.ReLU)


@pytest.mark.parametrize("arch, channels, side", [("alexnet", 256, 13), ("vgg16", 512, 14)])
def test_torchvision_trunks_stop_at_the_last_relu(arch, channels, side):
    trunk = build_trunk(arch)
    reference = getattr(torchvision.models, arch)().features
    assert len(trunk.features) == len(reference) - 1  # everything but pool5
    assert isinstance(reference[-1], torch.nn.MaxPool2d)
    assert trunk.out_channels == channels
    layers = [type(m) for m in trunk.features]
    assert layers == [type(m) for m in reference][:-1]
    if arch == "alexnet":  # vgg16 at 224 costs seconds on a CPU; its size follows from 4 pools
        assert trunk(torch.randn(1, 3, 224, 224)).shape == (1, channels, side, side)


def test_random_weights_are_deterministic():
    a, b = build_trunk("zf5"), build_trunk("zf5")
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)
    assert describe_weights("zf5", "random") == ("random:seed0", ZF5_PREPROCESSING)
    assert describe_weights("alexnet", "imagenet") == (
        "imagenet:AlexNet_Weights.IMAGENET1K_V1",
        TORCHVISION_PREPROCESSING,
    )


# ----------------------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip(tmp_path):
    trunk = build_trunk("zf5")
    with torch.no_grad():
        trunk.features.conv1.weight.mul_(3.0)  # distinguishable from the random init
    width = 8  # a narrow head keeps the file small; the format does not depend on it
    head = {
        "fc6.weight": torch.randn(width, 256 * 50),
        "fc6.bias": torch.randn(width),
        "fc7.weight": torch.randn(width, width),
        "fc7.bias": torch.randn(width),
    }
    pre = Preprocessing((100.0, 110.0, 120.0), (2.0, 2.0, 2.0), "BGR", 255.0)
    path = save_backbone_checkpoint(
        tmp_path / "zf5.pt", "zf5", trunk, pre, head=head, head_pyramid=(1, 2, 3, 6), source="test"
    )
    assert not list(tmp_path.glob("*.tmp-*"))
    raw = torch.load(path, weights_only=True)
    assert (raw["format"], raw["version"], raw["arch"]) == ("sppdet-backbone", 1, "zf5")
    backbone = load_backbone("zf5", str(path))
    for (k, v), (k2, v2) in zip(
        trunk.state_dict().items(), backbone.trunk.state_dict().items(), strict=True
    ):
        assert k == k2 and torch.equal(v, v2)
    assert backbone.preprocessing == pre and backbone.source == "test"
    assert backbone.head_pyramid == (1, 2, 3, 6)
    assert backbone.weights_id.startswith("file:")
    assert set(backbone.head_state((1, 2, 3, 6))) == set(head)
    assert set(backbone.head_state((6,))) == {"fc7.weight", "fc7.bias"}  # fc6 does not fit
    assert torch.equal(backbone.head_state((1, 2, 3, 6))["fc6.bias"], head["fc6.bias"])


@pytest.mark.parametrize(
    "content, message",
    [(None, "not found"), (b"not a torch file", "not a readable"), ("wrong-version", "version 7")],
)
def test_bad_weights_files_fail_with_one_line(tmp_path, content, message):
    path = tmp_path / "weights.pt"
    if content == "wrong-version":
        save_backbone_checkpoint(path, "zf5", build_trunk("zf5"), ZF5_PREPROCESSING)
        payload = torch.load(path, weights_only=True)
        payload["version"] = 7
        torch.save(payload, path)
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(SppdetError, match=message) as err:
        load_backbone("zf5", str(path))
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_checkpoint_for_another_arch_is_refused(tmp_path):
    path = save_backbone_checkpoint(tmp_path / "z.pt", "zf5", build_trunk("zf5"), ZF5_PREPROCESSING)
    with pytest.raises(SppdetError, match="holds zf5 weights, not alexnet"):
        read_checkpoint(path, "alexnet")
