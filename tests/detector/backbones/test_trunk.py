"""Tests of ``sppdet.detector.backbones.trunk``: trunks cut out of torchvision classifiers."""

from __future__ import annotations

import subprocess
import sys

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


FAULTS_SCRIPT = """
import resource, sys, torch
from sppdet.detector.backbones.trunk import keep_freed_memory
if sys.argv[1] == "keep":
    keep_freed_memory()
for _ in range(2):
    torch.ones(25_000_000)  # 100 MB, filled, then freed: the heap settles
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    torch.ones(25_000_000)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_kept_freed_memory_is_not_faulted_in_again() -> None:
    """100 MB tensors in turn: glibc maps and faults each afresh (24,414 pages of 4 KiB each),
    unless freed blocks are kept, when a freed one is reused without a fault (seen: none of
    five faulted, now and then one)."""
    faults = {
        mode: int(subprocess.run(
            [sys.executable, "-c", FAULTS_SCRIPT, mode], capture_output=True, text=True,
            check=True,
        ).stdout)
        for mode in ("default", "keep")
    }  # fmt: skip
    pages = 25_000_000 * 4 // 4096
    assert faults["default"] >= 5 * pages  # every one of the five faulted afresh
    assert faults["keep"] <= pages + pages // 10  # at most one of them
