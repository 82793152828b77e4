"""Tests of ``sppdet.detector.backbones.zf5``."""

from __future__ import annotations

import math

import numpy as np
import torch

from sppdet.detector.backbones.trunk import build_trunk
from sppdet.detector.backbones.zf5 import WithinChannelLRN


def test_within_channel_lrn_formula():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 5, 6)) * 40
    alpha = 5e-5
    want = np.empty_like(x)
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    for i in range(5):
        for j in range(6):
            local = (padded[:, :, i : i + 3, j : j + 3] ** 2).sum(axis=(2, 3))
            want[:, :, i, j] = x[:, :, i, j] * (1 + alpha / 9 * local) ** -0.75
    got = WithinChannelLRN()(torch.from_numpy(x)).numpy()
    assert np.allclose(got, want, rtol=1e-12, atol=0)
    assert not np.allclose(got, x)  # 40-sized activations are visibly normalised


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
