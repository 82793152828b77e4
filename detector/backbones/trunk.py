"""The conv trunk of a backbone: its convolutional layers up to the last conv's ReLU (conv5,
conv5_3, layer3), without the final pooling, since SPP replaces it.

``build_trunk`` makes any registered trunk (``sppdet.detector.backbones.registry``) with
deterministic random weights; ``trunk_spec`` gives its channels and declared layers, from which the
cell mapping follows; ``to_device`` readies a trunk for inference.
"""

from __future__ import annotations

import torch
from torch import nn

from sppdet.detector.backbones.registry import Layer, backbone_spec

RANDOM_SEED = 0  # --weights random; fingerprints name it (random:seed0)


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
    """TRUNK on DEVICE for inference: eval mode, channels-last on a GPU (faster cuDNN kernels;
    inputs follow with ``device_input``)."""
    trunk = trunk.to(device).eval()
    return trunk.to(memory_format=torch.channels_last) if device.type == "cuda" else trunk
