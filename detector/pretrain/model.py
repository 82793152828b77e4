"""The classifier ``pretrain`` trains, and the checks of its settings.

conv1-5, SPP over the whole conv5 map (``spp.image_spp.image_spp``), fc6/fc7 with dropout and fc8
(``heads.fc.FcHead``): an SPP-net that takes any input size. The SPP output has the same length
at every size, so the sizes of multi-size training (paper §2.3) share fc6.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from sppdet.detector.backbones.trunk import Trunk, build_trunk, check_arch
from sppdet.detector.core.config import PretrainConfig
from sppdet.detector.core.errors import SppdetError
from sppdet.detector.heads.fc import FcHead
from sppdet.detector.spp.bins import check_pyramid, pyramid_dim
from sppdet.detector.spp.image_spp import image_spp

PLATEAU_METRICS = ("error", "loss")  # held-out values the learning-rate plateau may watch


class SppClassifier(nn.Module):
    """conv1-5 -> whole-map SPP -> fc6, fc7 (dropout) -> fc8: an SPP-net for any input size."""

    def __init__(self, trunk: Trunk, pyramid: Sequence[int], head: FcHead) -> None:
        super().__init__()
        self.trunk = trunk
        self.pyramid = check_pyramid(pyramid)
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(image_spp(self.trunk(x), self.pyramid))


def build_classifier(
    arch: str,
    num_outputs: int,
    pyramid: Sequence[int],
    fc_dim: int,
    dropout: float,
    seed: int,
    fc8_std: float,
) -> SppClassifier:
    """A randomly initialised classifier, the same for the same SEED.

    Every convolution gets He et al.'s initialisation (normal, std sqrt(2 / fan_in), zero bias),
    which keeps the activation scale through the ReLU trunk: with torchvision's default (AlexNet)
    a trunk trained from scratch without batch normalisation barely moves in the first epochs.
    """
    trunk = build_trunk(arch, seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for layer in trunk.modules():
            if isinstance(layer, nn.Conv2d):
                nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
                nn.init.zeros_(layer.bias)
        head = FcHead(pyramid_dim(pyramid, trunk.out_channels), fc_dim, num_outputs, dropout)
    head.init_fc8(fc8_std, torch.Generator().manual_seed(seed + 1))
    return SppClassifier(trunk, pyramid, head)


def check_input_sizes(trunk: Trunk, sizes: Sequence[int]) -> None:
    """Refuse input sizes the trunk cannot run (no conv5 cell left)."""
    with torch.no_grad():
        for size in sizes:
            try:
                ok = min(trunk(torch.zeros(1, 3, size, size)).shape[-2:]) >= 1
            except RuntimeError:
                ok = False
            if not ok:
                raise SppdetError(f"--sizes {size}: too small for the {trunk.arch} trunk")


def check_config(cfg: PretrainConfig) -> None:
    """Refuse a pretrain configuration that cannot train, naming the option to change."""
    check_arch(cfg.backbone)
    try:
        check_pyramid(cfg.pyramid)
    except ValueError as exc:
        raise SppdetError(f"--pyramid {cfg.pyramid}: {exc}") from None
    problems = [
        (not cfg.sizes or min(cfg.sizes) < 1, f"--sizes {cfg.sizes}: give positive pixel sizes"),
        (cfg.epochs < 1, f"--epochs {cfg.epochs}: must be at least 1"),
        (cfg.batch_size < 1, f"--batch-size {cfg.batch_size}: must be at least 1"),
        (cfg.base_lr <= 0, f"--lr {cfg.base_lr}: must be positive"),
        (cfg.fc_dim < 1, f"--fc-dim {cfg.fc_dim}: must be at least 1"),
        (not 0 < cfg.crop_fraction <= 1, f"crop_fraction {cfg.crop_fraction}: must be in (0, 1]"),
        (cfg.workers < 0, f"--workers {cfg.workers}: must be 0 or more"),
        (
            cfg.plateau_metric not in PLATEAU_METRICS,
            f"plateau_metric {cfg.plateau_metric!r}: choose error or loss",
        ),
    ]
    for bad, message in problems:
        if bad:
            raise SppdetError(message)
