"""ZF-5, the paper's backbone (Zeiler & Fergus's 5-conv net as in the released SPP_net model),
defined in code: conv1..relu5 with Caffe's within-channel LRN and ceil-mode pooling, its
preprocessing, and its registry entry. Torchvision has no ZF-5 weights: ``--weights random`` or a
checkpoint (``sppdet pretrain`` makes one)."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torch.nn import functional as F

from sppdet.detector.backbones.preprocessing import Preprocessing
from sppdet.detector.backbones.registry import BackboneSpec, kaiming_init_

LRN_ALPHA = 5e-5  # released ZF-5: within-channel LRN, local size 3


LRN_BETA = 0.75


LRN_SIZE = 3


ROOT_BETA = 0.75  # computed with square roots (WithinChannelLRN.forward)


ROOT_DTYPES = (torch.float32, torch.float64)  # bf16/fp16 would round each of the three steps


# The released ZF-5 model: BGR, 0-255, scalar mean 128 (paper Appendix A for VOC), no scaling.
ZF5_PREPROCESSING = Preprocessing((128.0, 128.0, 128.0), (1.0, 1.0, 1.0), "BGR", 255.0)


class WithinChannelLRN(nn.Module):
    """Caffe's WITHIN_CHANNEL LRN as in the released ZF-5: x * (1 + alpha/9 * sum_3x3 x^2)^-beta.

    Caffe averages x^2 over the 3x3 window with zero padding and always divides by 9, which is
    avg_pool2d with count_include_pad=True.

    Without autograd (inference) everything after the pooling runs in place on its output, and
    for the released beta (3/4) in float32 or float64 the power is d^(-3/4) = sqrt(rsqrt(d)^3)
    instead of ``pow``: on a CPU each fresh [96, h, w] tensor costs its page faults, and ``pow``
    is a transcendental call per element; the plain expression took four times as long as conv1
    (BENCHMARKS.md, issue 20). The two differ by float rounding only: rsqrt (2 roundings), the
    cube (2 more, on top of 3 times rsqrt's error) and sqrt (halving it, plus one) are within 5u
    of the exact power, ``pow`` within 2u (one ulp), and the final product rounds once in each:
    at most 9u apart, u the dtype's unit roundoff (2^-24 in float32). Under autograd the plain
    expression runs.
    """

    def __init__(self, size: int = LRN_SIZE, alpha: float = LRN_ALPHA, beta: float = LRN_BETA):
        super().__init__()
        self.size, self.alpha, self.beta = size, alpha, beta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean_sq = F.avg_pool2d(
            torch.square(x), self.size, 1, self.size // 2, count_include_pad=True
        )
        if x.requires_grad:
            return x * (1.0 + self.alpha * mean_sq).pow(-self.beta)
        base = mean_sq.mul_(self.alpha).add_(1.0)
        if self.beta == ROOT_BETA and x.dtype in ROOT_DTYPES:
            return base.rsqrt_().pow_(3).sqrt_().mul_(x)
        return base.pow_(-self.beta).mul_(x)

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


def random_zf5_features() -> nn.Sequential:
    """ZF-5 with Kaiming-normal convolutions and zero biases, drawn from the global generator."""
    return kaiming_init_(zf5_features())


SPEC = BackboneSpec(
    name="zf5",
    title="ZF-5",
    description="ZF-5 conv1-conv5, the paper's",
    build_features=random_zf5_features,
    # conv1, pool1, conv2, pool2, conv3, conv4, conv5 as in zf5_features
    layers=((7, 2, 1), (3, 2, 0), (5, 2, 0), (3, 2, 0), (3, 1, 1), (3, 1, 1), (3, 1, 1)),
    channels=256,
    preprocessing=ZF5_PREPROCESSING,
    input_size=224,
)
