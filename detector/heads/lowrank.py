"""fc6 and fc7 compressed by a truncated SVD (Fast R-CNN, Girshick 2015, section 3.1).

A fully connected layer y = W x + b, W [out, in] = U S Vt, becomes two: x -> S_r Vt_r x (r
outputs, no bias), then -> U_r (.) + b, where _r keeps the r largest singular values: the best
rank-r approximation of W. A window then costs r * (in + out) multiply-adds instead of in * out.
The factors are computed in float64 and stored in the layer's dtype (float32): at full rank their
product is W up to float32 rounding.
"""

from __future__ import annotations

import torch
from torch import nn

from sppdet.detector.core.errors import SppdetError

COMPRESSIBLE = ("fc6", "fc7")  # the layers --fc-rank R6,R7 names, in its order


class LowRankLinear(nn.Module):
    """W x + b with W of rank at most ``rank``, stored as two layers: ``first`` [rank, in], no
    bias, and ``second`` [out, rank], with the bias."""

    def __init__(self, in_features: int, out_features: int, rank: int) -> None:
        super().__init__()
        self.first = nn.Linear(in_features, rank, bias=False)
        self.second = nn.Linear(rank, out_features)

    @property
    def in_features(self) -> int:
        return self.first.in_features

    @property
    def out_features(self) -> int:
        return self.second.out_features

    @property
    def rank(self) -> int:
        return self.first.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))


def check_rank(rank: int, out_features: int, in_features: int, name: str) -> int:
    """RANK if a layer of weight [OUT_FEATURES, IN_FEATURES] can be truncated to it, else a
    one-line error naming the layer and the ranks it takes."""
    most = min(out_features, in_features)
    if not 1 <= rank <= most:
        raise SppdetError(
            f"--fc-rank {rank} for {name} ({out_features} x {in_features}): out of range ; give "
            f"a rank from 1 to {most}"
        )
    return rank


def truncated_svd(layer: nn.Linear, rank: int, name: str = "the layer") -> LowRankLinear:
    """LAYER's best rank-RANK approximation (in the Frobenius norm) as a ``LowRankLinear`` of
    LAYER's dtype on its device; the bias is kept as it is."""
    out_features, in_features = layer.weight.shape
    check_rank(rank, out_features, in_features, name)
    weight = layer.weight.detach()
    first, second = _svd_factors(weight.to(torch.float64), rank)
    low = LowRankLinear(in_features, out_features, rank).to(weight.device, weight.dtype)
    with torch.no_grad():
        low.first.weight.copy_(first)
        low.second.weight.copy_(second)
        if layer.bias is None:
            low.second.bias.zero_()
        else:
            low.second.bias.copy_(layer.bias.detach())
    return low


def _svd_factors(weight: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(first [rank, in], second [out, rank]) with second @ first = U_r S_r Vt_r of WEIGHT
    (float64): S_r Vt_r and U_r when out <= in (Fast R-CNN's split), else Vt_r and U_r S_r.

    The singular vectors of the shorter side are the eigenvectors of the smaller Gram matrix
    (W W^T or W^T W), taken with ``torch.linalg.eigh`` in float64, and the other factor is W
    projected on them, so that no singular value is divided by. ``torch.linalg.svd`` of W gives
    the same factors up to float64 rounding but takes about ten times as long on a CPU (minutes
    for a 4,096 x 12,800 fc6 on two cores): LAPACK's SVD spends its time in matrix-vector steps,
    while the Gram matrix is one matrix product.
    """
    out_features, in_features = weight.shape
    if out_features <= in_features:
        _, vectors = torch.linalg.eigh(weight @ weight.T)  # eigenvalues ascending
        u = vectors[:, -rank:].flip(1)  # [out, rank], largest singular value first
        return u.T @ weight, u
    _, vectors = torch.linalg.eigh(weight.T @ weight)
    v = vectors[:, -rank:].flip(1)  # [in, rank]
    return v.T, weight @ v


def linear_macs(layer: nn.Module) -> int:
    """Multiply-adds per input row of a ``nn.Linear`` or ``LowRankLinear``."""
    if isinstance(layer, LowRankLinear):
        return layer.rank * (layer.in_features + layer.out_features)
    if isinstance(layer, nn.Linear):
        return layer.in_features * layer.out_features
    raise TypeError(f"not a fully connected layer: {type(layer).__name__}")
