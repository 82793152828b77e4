"""Tests of ``sppdet.detector.backbones.caffe_alexnet``: Caffe's AlexNet (R-CNN's CaffeNet)."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from sppdet.detector.backbones.caffe_alexnet import SPEC
from sppdet.detector.backbones.registry import backbone_spec
from sppdet.detector.backbones.trunk import build_trunk
from tests.detector.backbones.caffe.shared import ALEXNET_LRN, caffe_lrn


def test_lrn_is_caffes_across_channel_formula() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((7, 4, 5)) * 60
    got = build_trunk("caffe-alexnet").features.norm1(torch.from_numpy(x)[None])[0].numpy()
    want = caffe_lrn(x, **ALEXNET_LRN)
    assert np.allclose(got, want, rtol=1e-10, atol=0)
    assert not np.allclose(got, x, rtol=1e-2)  # 60-sized activations are visibly normalised


def caffe_side(a: int) -> int:
    """conv5 side by Caffe's rules: convolutions round down, poolings up."""
    a = (a - 11) // 4 + 1  # conv1 11x11 s4
    a = math.ceil((a - 3) / 2) + 1  # pool1
    a = (a + 4 - 5) + 1  # conv2 5x5 p2
    return math.ceil((a - 3) / 2) + 1  # pool2; conv3-5 keep the size


def test_map_sizes_and_groups() -> None:
    trunk = build_trunk("caffe-alexnet").eval()
    assert caffe_side(227) == 13
    with torch.inference_mode():
        for h, w in ((227, 227), (100, 160), (229, 301)):
            out = trunk(torch.randn(1, 3, h, w))
            assert out.shape == (1, 256, caffe_side(h), caffe_side(w))
    f = trunk.features
    groups = {name: m.groups for name, m in f.named_children() if isinstance(m, nn.Conv2d)}
    assert groups == {"conv1": 1, "conv2": 2, "conv3": 1, "conv4": 2, "conv5": 2}
    assert tuple(f.conv2.weight.shape) == (256, 48, 5, 5)
    names = [name for name, _ in f.named_children()]
    assert names.index("pool1") < names.index("norm1")  # CaffeNet pools, then normalises


def test_declared_layers_are_the_trunks() -> None:
    def ksp(m: nn.Module) -> tuple[int, int, int]:
        def one(v):
            return v if isinstance(v, int) else v[0]

        return one(m.kernel_size), one(m.stride), one(m.padding)

    features = build_trunk("caffe-alexnet").features
    layers = [m for m in features if isinstance(m, nn.Conv2d | nn.MaxPool2d)]
    assert tuple(ksp(m) for m in layers) == SPEC.layers
    geometry = backbone_spec("caffe-alexnet").geometry
    assert (geometry.stride, geometry.offset) == (16, 17.0)  # conv1 5 + pool1 1*4 + pool2 1*8
    assert SPEC.preprocessing.channel_order == "BGR" and SPEC.preprocessing.pixel_range == 255.0
