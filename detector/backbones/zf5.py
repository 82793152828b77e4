"""Zf5: split out of the former ``nets`` module."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torch.nn import functional as F

LRN_ALPHA = 5e-5  # released ZF-5: within-channel LRN, local size 3


LRN_BETA = 0.75


LRN_SIZE = 3


class WithinChannelLRN(nn.Module):
    """Caffe's WITHIN_CHANNEL LRN as in the released ZF-5: x * (1 + alpha/9 * sum_3x3 x^2)^-beta.

    Caffe averages x^2 over the 3x3 window with zero padding and always divides by 9, which is
    avg_pool2d with count_include_pad=True.
    """

    def __init__(self, size: int = LRN_SIZE, alpha: float = LRN_ALPHA, beta: float = LRN_BETA):
        super().__init__()
        self.size, self.alpha, self.beta = size, alpha, beta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean_sq = F.avg_pool2d(x * x, self.size, 1, self.size // 2, count_include_pad=True)
        return x * (1.0 + self.alpha * mean_sq).pow(-self.beta)

    def extra_repr(self) -> str:
        return f"size={self.size}, alpha={self.alpha}, beta={self.beta}"


def zf5_features() -> nn.Sequential:
    """ZF-5 conv1..relu5 (SPEC.md). Caffe pools in ceil mode: 224 -> 110 -> 55 -> 26 -> 13."""
    return nn.Sequential(
        OrderedDict(
            [
                ("conv1", nn.Conv2d(3, 96, 7, stride=2, padding=1)),
                ("relu1", nn.ReLU(inplace=True)),
                ("norm1", WithinChannelLRN()),
                ("pool1", nn.MaxPool2d(3, stride=2, ceil_mode=True)),
                ("conv2", nn.Conv2d(96, 256, 5, stride=2, padding=0)),
                ("relu2", nn.ReLU(inplace=True)),
                ("norm2", WithinChannelLRN()),
                ("pool2", nn.MaxPool2d(3, stride=2, ceil_mode=True)),
                ("conv3", nn.Conv2d(256, 384, 3, padding=1)),
                ("relu3", nn.ReLU(inplace=True)),
                ("conv4", nn.Conv2d(384, 384, 3, padding=1)),
                ("relu4", nn.ReLU(inplace=True)),
                ("conv5", nn.Conv2d(384, 256, 3, padding=1)),
                ("relu5", nn.ReLU(inplace=True)),
            ]
        )
    )
