"""Tests of ``sppdet.detector.backbones.zf5``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from sppdet.detector.backbones.trunk import build_trunk, to_device
from sppdet.detector.backbones.zf5 import LRN_ALPHA, LRN_BETA, WithinChannelLRN


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


def old_lrn(x: torch.Tensor, alpha: float = LRN_ALPHA, beta: float = LRN_BETA) -> torch.Tensor:
    """The LRN as it was before issue 20: the plain expression, pow and all."""
    mean_sq = F.avg_pool2d(x * x, 3, 1, 1, count_include_pad=True)
    return x * (1.0 + alpha * mean_sq).pow(-beta)


def _activations(channels_last: bool) -> torch.Tensor:
    """ReLU outputs up to 2,000 (the LRN's denominator then spans 1 to several hundred)."""
    g = torch.Generator().manual_seed(0)
    x = torch.relu(torch.randn(2, 8, 30, 41, generator=g)) * torch.rand(1, 8, 1, 1, generator=g)
    x = x * 2000
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@pytest.mark.parametrize("channels_last", [False, True])
def test_lrn_without_autograd_is_the_old_one_within_float32_rounding(channels_last: bool) -> None:
    x = _activations(channels_last)
    with torch.inference_mode():
        got = WithinChannelLRN()(x)
        want = old_lrn(x)
    assert got.is_contiguous(memory_format=torch.channels_last) == channels_last
    # The power as sqrt(rsqrt(d)^3) is within 5u of the exact one and pow within 2u, and the
    # products with x round once each: at most 9u apart (WithinChannelLRN's docstring).
    u = 2.0**-24
    assert ((got.double() - want.double()).abs() <= 9 * u * want.double().abs()).all()
    assert not torch.equal(got, want)  # the square roots are in use
    assert float((1 + LRN_ALPHA * F.avg_pool2d(x * x, 3, 1, 1)).max()) > 100  # a wide range


def test_lrn_under_autograd_and_other_betas_is_the_old_one_to_the_bit() -> None:
    x = _activations(False)
    leaf = x.clone().requires_grad_(True)
    out = WithinChannelLRN()(leaf)
    assert torch.equal(out.detach(), old_lrn(x))
    out.sum().backward()  # the plain expression keeps what its gradient needs
    assert leaf.grad is not None and torch.isfinite(leaf.grad).all()
    with torch.inference_mode():
        assert torch.equal(WithinChannelLRN(beta=0.5)(x), old_lrn(x, beta=0.5))
        half = x.to(torch.bfloat16)
        assert torch.equal(WithinChannelLRN()(half), old_lrn(half))


def test_trunk_on_the_cpu_runs_channels_last_with_the_same_maps() -> None:
    trunk = build_trunk("zf5").eval()
    x = torch.randn(1, 3, 150, 190, generator=torch.Generator().manual_seed(1)) * 60
    with torch.inference_mode():
        planar = trunk(x)
        fast = to_device(build_trunk("zf5"), torch.device("cpu"))(x)
    assert fast.is_contiguous(memory_format=torch.channels_last)
    # oneDNN reduces each conv's fan-in (at most 384 * 3 * 3 = 3,456 products) in another order
    # for channels-last maps: about sqrt(3,456) * eps = 59 eps per layer, five layers, plus the
    # LRNs' 9u; a factor of 4 to spare, relative to the map's largest value.
    eps = torch.finfo(torch.float32).eps
    tol = 4 * (5 * 59 + 2 * 9) * eps * float(planar.abs().max())
    torch.testing.assert_close(fast, planar, rtol=0, atol=tol)


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
