"""Backbones: ZF-5 defined in code, AlexNet and VGG-16 conv trunks from torchvision, their fc6/fc7
weights, the input preprocessing each set of weights expects, and the backbone checkpoint format.

A trunk is the convolutional part up to the last conv layer's ReLU (conv5 / conv5_3): no final
pooling, since SPP replaces it. Its ``features`` Sequential is what the cell mapping reads
(``sppdet.detector.spp.module_layers``).

``--weights``:
  * ``random``: deterministic initialisation (seed 0), for smoke runs and ``pretrain``.
  * ``imagenet``: torchvision's weights API (AlexNet_Weights / VGG16_Weights.IMAGENET1K_V1); needs
    the file in torch's hub cache or a network connection. ZF-5 has no torchvision weights.
  * ``PATH``: a backbone checkpoint (format below) or a torchvision state dict of the whole
    classifier (``features.*``/``classifier.*`` keys, e.g. ``alexnet-owt-7be5be79.pth`` fetched on
    another machine), loaded with ``torch.load(weights_only=True)``.

Checkpoint format (``save_backbone_checkpoint``), a dict saved with ``torch.save``::

    format        "sppdet-backbone"
    version       1
    arch          "zf5" | "alexnet" | "vgg16"
    trunk         state dict of Trunk.features (zf5: conv1.weight ...; torchvision trunks keep
                  torchvision's indices: 0.weight, 3.weight, ...)
    head          None or {"fc6.weight", "fc6.bias", "fc7.weight", "fc7.bias"}
    head_pyramid  None or the pyramid levels fc6 was trained on, e.g. [1, 2, 3, 6]
    preprocessing {"mean": [3 floats], "std": [3 floats], "channel_order": "RGB"|"BGR",
                   "pixel_range": 255.0 | 1.0}   (mean/std in the network's channel order and
                  pixel range: x = (pixel - mean) / std)
    source        free text: what made it

Only tensors, numbers, strings, lists and dicts, so ``weights_only=True`` loads it.
"""

from __future__ import annotations

from functools import cache

import torch
import torchvision
from torch import nn

from sppdet.detector.backbones.preprocessing import Preprocessing
from sppdet.detector.backbones.zf5 import zf5_features
from sppdet.detector.core.errors import SppdetError

ARCHS = ("zf5", "alexnet", "vgg16")


FC_WIDTH = 4096


RANDOM_SEED = 0


# Pretrained fc6 of torchvision's classifiers reads a fixed 6x6 (AlexNet) / 7x7 (VGG-16) map:
# a single-level pyramid {6} / {7} reproduces that input, so fc6 can be reused as is.
TORCHVISION_PYRAMID = {"alexnet": (6,), "vgg16": (7,)}


_TORCHVISION_FC = {
    "alexnet": ("classifier.1", "classifier.4"),
    "vgg16": ("classifier.0", "classifier.3"),
}


_TRUNK_DEPTH = {"alexnet": 12, "vgg16": 30}  # modules of `features` up to the last conv's ReLU


# The released ZF-5 model: BGR, 0-255, scalar mean 128 (paper Appendix A for VOC), no scaling.
ZF5_PREPROCESSING = Preprocessing((128.0, 128.0, 128.0), (1.0, 1.0, 1.0), "BGR", 255.0)


class Trunk(nn.Module):
    """The convolutional trunk of a backbone: image batch [B, 3, H, W] -> conv5 [B, C, h, w]."""

    def __init__(self, arch: str, features: nn.Sequential, out_channels: int) -> None:
        super().__init__()
        self.arch = arch
        self.features = features
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def _torchvision_model(arch: str) -> nn.Module:
    return torchvision.models.alexnet() if arch == "alexnet" else torchvision.models.vgg16()


def build_trunk(arch: str, seed: int = RANDOM_SEED) -> Trunk:
    """A trunk with deterministic random weights (Kaiming normal convolutions, zero biases)."""
    check_arch(arch)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if arch == "zf5":
            features, channels = zf5_features(), 256
            for layer in features:
                if isinstance(layer, nn.Conv2d):
                    nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
                    nn.init.zeros_(layer.bias)
        else:
            full = _torchvision_model(arch).features
            features = nn.Sequential(*list(full.children())[: _TRUNK_DEPTH[arch]])
            channels = 256 if arch == "alexnet" else 512
    return Trunk(arch, features, channels)


@cache
def trunk_spec(arch: str) -> tuple[int, tuple[tuple[int, int, int], ...]]:
    """(conv5 channels, (kernel, stride, padding) of each conv/pool layer) of ARCH's trunk."""
    from sppdet.detector.spp.geometry import module_layers

    trunk = build_trunk(arch)
    return trunk.out_channels, tuple(module_layers(trunk.features))


def check_arch(arch: str) -> None:
    if arch not in ARCHS:
        raise SppdetError(f"unknown backbone {arch!r}: choose one of {', '.join(ARCHS)}")


def to_device(trunk: Trunk, device: torch.device) -> Trunk:
    """TRUNK on DEVICE for inference: eval mode, channels-last on a GPU (faster cuDNN kernels;
    inputs follow with ``device_input``)."""
    trunk = trunk.to(device).eval()
    return trunk.to(memory_format=torch.channels_last) if device.type == "cuda" else trunk
