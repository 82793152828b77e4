"""fc6 and fc7 replaced by rank-r layers, fitted to the weights or to the layer's responses.

A fully connected layer y = W x + b becomes two: x -> A x (r outputs, no bias), then -> U (.) + c.
A window then costs r * (in + out) multiply-adds instead of in * out. Two fits (``FITS``):

- ``weights``: Fast R-CNN's truncated SVD (Girshick 2015, section 3.1). W = U S Vt, A = S_r Vt_r,
  c = b: the best rank-r approximation of W itself, whatever the inputs.
- ``responses``: the best rank-r affine map in mean squared output error over sample inputs
  (Zhang et al. 2015, "Accelerating very deep convolutional networks", linear response
  reconstruction). With m the mean and C the covariance of W x over the sample and U_r the top r
  eigenvectors of C: A = U_r^T W, U = U_r, c = b + (I - U_r U_r^T) m. It beats the weights' fit
  when the inputs fill few directions, as pooled conv5 features do: on raccoon's 4,096-wide head
  the top 512 of fc6's 4,096 singular values carry 45% of W's energy, while the top 512 response
  directions carry 91% of the responses' variance.

The factors are computed in float64 and stored in the layer's dtype (float32): at full rank their
product is W up to float32 rounding.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sppdet.detector.core.errors import SppdetError

COMPRESSIBLE = ("fc6", "fc7")  # the layers --fc-rank R6,R7 names, in its order
FITS = ("responses", "weights")  # --fc-rank-fit: what the rank-r layers reproduce best


@dataclass(frozen=True)
class FcRank:
    """fc6 and fc7 truncated to ``ranks`` (r6, r7) by ``fit`` (one of ``FITS``)."""

    ranks: tuple[int, int]
    fit: str = "responses"

    def __post_init__(self) -> None:
        if self.fit not in FITS:
            raise SppdetError(f"--fc-rank-fit {self.fit!r}: choose one of {', '.join(FITS)}")

    @property
    def suffix(self) -> str:
        """What names of its folders and files end with: nothing for the default fit, else
        -weights."""
        return "" if self.fit == "responses" else f"-{self.fit}"

    @property
    def tag(self) -> str:
        """Short name for folders: 512x256, or 512x256-weights for the weights' fit."""
        return f"{self.ranks[0]}x{self.ranks[1]}{self.suffix}"

    def record(self) -> dict[str, Any]:
        return {"fc_rank": list(self.ranks), "fc_rank_fit": self.fit}


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
    first, second = _svd_factors(layer.weight.detach().to(torch.float64), rank)
    return _low_rank(layer, first, second, None if layer.bias is None else layer.bias.detach())


class ResponseMoments:
    """Running mean and covariance of a layer's responses W x (no bias) over batches of inputs,
    accumulated in float64. A batch's products run in the layer's dtype on responses less the
    first batch's mean, so the covariance is not the small difference of two large sums."""

    def __init__(self, layer: nn.Linear) -> None:
        self.weight = layer.weight.detach()
        out = self.weight.shape[0]
        self.count = 0
        self.shift: torch.Tensor | None = None
        self.total = torch.zeros(out, dtype=torch.float64, device=self.weight.device)
        self.products = torch.zeros(out, out, dtype=torch.float64, device=self.weight.device)

    def add(self, inputs: torch.Tensor) -> None:
        responses = inputs.to(self.weight.device, self.weight.dtype) @ self.weight.T
        if self.shift is None:
            self.shift = responses.mean(0)
        responses = responses - self.shift
        self.count += len(responses)
        self.total += responses.sum(0, dtype=torch.float64)
        self.products += (responses.T @ responses).to(torch.float64)

    def mean_and_covariance(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.count < 2 or self.shift is None:
            raise ValueError("fitting to responses needs at least 2 sample inputs")
        shifted = self.total / self.count
        covariance = self.products / self.count - torch.outer(shifted, shifted)
        return shifted + self.shift.to(torch.float64), covariance


def fitted_to_responses(
    layer: nn.Linear, rank: int, inputs: Iterable[torch.Tensor], name: str = "the layer"
) -> LowRankLinear:
    """LAYER's best rank-RANK affine replacement in mean squared output error over the batches
    INPUTS ([n, in] each): see the module's docstring. A layer of LAYER's dtype on its device."""
    out_features, in_features = layer.weight.shape
    check_rank(rank, out_features, in_features, name)
    moments = ResponseMoments(layer)
    for batch in inputs:
        moments.add(batch)
    mean, covariance = moments.mean_and_covariance()
    _, vectors = torch.linalg.eigh(covariance)  # eigenvalues ascending
    u = vectors[:, -rank:].flip(1)  # [out, rank], the largest first
    weight = layer.weight.detach()
    first = u.T @ weight.to(torch.float64)
    bias = mean - u @ (u.T @ mean)  # what the dropped directions held on average
    if layer.bias is not None:
        bias = bias + layer.bias.detach().to(torch.float64)
    return _low_rank(layer, first, u, bias)


def _low_rank(
    layer: nn.Linear, first: torch.Tensor, second: torch.Tensor, bias: torch.Tensor | None
) -> LowRankLinear:
    """A ``LowRankLinear`` of LAYER's dtype and device holding FIRST, SECOND and BIAS (None: 0)."""
    weight = layer.weight
    low = LowRankLinear(layer.in_features, layer.out_features, first.shape[0])
    low = low.to(weight.device, weight.dtype)
    with torch.no_grad():
        low.first.weight.copy_(first)
        low.second.weight.copy_(second)
        if bias is None:
            low.second.bias.zero_()
        else:
            low.second.bias.copy_(bias)
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
