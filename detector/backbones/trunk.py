"""The conv trunk of a backbone: its convolutional layers up to the last conv's ReLU (conv5,
conv5_3, layer3), without the final pooling, since SPP replaces it.

``build_trunk`` makes any registered trunk (``sppdet.detector.backbones.registry``) with
deterministic random weights; ``trunk_spec`` gives its channels and declared layers, from which the
cell mapping follows; ``to_device`` readies a trunk for inference.
"""

from __future__ import annotations

import ctypes
import logging
import sys

import torch
from torch import nn

from sppdet.detector.backbones.registry import Layer, backbone_spec

RANDOM_SEED = 0  # --weights random; fingerprints name it (random:seed0)

log = logging.getLogger(__name__)

# glibc's mallopt parameters, and the size under which freed blocks stay with the process.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
KEEP_FREED_BYTES = 1 << 30
_kept_freed_memory = False


class Trunk(nn.Module):
    """The convolutional trunk of a backbone: image batch [B, 3, H, W] -> conv5 [B, C, h, w]."""

    def __init__(self, arch: str, features: nn.Sequential, out_channels: int) -> None:
        super().__init__()
        self.arch = arch
        self.features = features
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def build_trunk(arch: str, seed: int = RANDOM_SEED) -> Trunk:
    """ARCH's trunk with deterministic random weights: the backbone's own initialisation drawn
    from a generator seeded with SEED (the global generator's state is left as it was)."""
    spec = backbone_spec(arch)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        features = spec.build_features()
    return Trunk(arch, features, spec.channels)


def trunk_spec(arch: str) -> tuple[int, tuple[Layer, ...]]:
    """(conv5 channels, (kernel, stride, padding) of each layer along the main path) of ARCH."""
    spec = backbone_spec(arch)
    return spec.channels, spec.layers


def check_arch(arch: str) -> None:
    """Refuse an unknown backbone name with a one-line user error."""
    backbone_spec(arch)


def to_device(trunk: Trunk, device: torch.device) -> Trunk:
    """TRUNK on DEVICE for inference: eval mode, weights channels-last. cuDNN's kernels are faster
    so (inputs follow with ``device_input``); on a CPU, oneDNN's convolutions then take and give
    channels-last maps without reordering them, and max pooling and zf5's LRN run several times
    faster on them than on planar maps: every trunk here gained 1.2-1.3x (BENCHMARKS.md, issue
    20). The maps come out channels-last, their values moved by float32 rounding only (another
    summation order)."""
    if device.type == "cpu":
        keep_freed_memory()
    return trunk.to(device).eval().to(memory_format=torch.channels_last)


def keep_freed_memory() -> None:
    """Have glibc keep freed blocks up to ``KEEP_FREED_BYTES`` for reuse (once per process).

    By default glibc maps every block above 32 MB afresh and unmaps it when freed, so each
    activation map of a trunk (conv1's is 65 MB at 688) costs its page faults on every image:
    a fifth of zf5's CPU time at 688 (BENCHMARKS.md, issue 20). Kept blocks are reused instead;
    the process holds on to its high-water mark (the peak it reached anyway). Elsewhere than
    Linux with glibc this does nothing.
    """
    global _kept_freed_memory
    if _kept_freed_memory or not sys.platform.startswith("linux"):
        return
    _kept_freed_memory = True
    try:
        libc = ctypes.CDLL("libc.so.6")
        done = libc.mallopt(M_MMAP_THRESHOLD, KEEP_FREED_BYTES) and libc.mallopt(
            M_TRIM_THRESHOLD, KEEP_FREED_BYTES
        )
    except (OSError, AttributeError):  # another C library (musl): its own allocator policy
        return
    log.debug("glibc keeps freed blocks up to %d bytes: %s", KEEP_FREED_BYTES, bool(done))
