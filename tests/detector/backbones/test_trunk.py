"""Tests of ``sppdet.detector.backbones.trunk``: trunks cut out of torchvision classifiers."""

from __future__ import annotations

import pytest
import torch
import torchvision

from sppdet.detector.backbones.trunk import build_trunk


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
