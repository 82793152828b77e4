"""Whole-map SPP: every level's bins over the full conv map, for classification and R-CNN pool5.

``image_spp`` pools a batch of maps with the Appendix A bins (``sppdet.detector.spp.bins``), or with
the paper's section 2.3 sliding-window form where that gives the same bins (``sliding_agrees``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch.nn import functional as F

from sppdet.detector.spp.bins import DEFAULT_PYRAMID, check_pyramid


def sliding_bins(a: int, n: int) -> int:
    """How many bins the paper's sliding form (window ceil(a/n), stride floor(a/n)) gives."""
    if a < n:
        return 0  # stride 0: the form is undefined
    return (a - math.ceil(a / n)) // (a // n) + 1


def sliding_agrees(a: int, n: int) -> bool:
    """Whether the sliding form's bins equal the Appendix A bins on a side of a cells."""
    if sliding_bins(a, n) != n:
        return False
    k, s = math.ceil(a / n), a // n
    return all((i * s, i * s + k) == ((i * a) // n, -((-(i + 1) * a) // n)) for i in range(n))


def image_spp(
    maps: torch.Tensor, pyramid: Sequence[int] = DEFAULT_PYRAMID, form: str = "bins"
) -> torch.Tensor:
    """Whole-map SPP for classification: [B, C, H, W] -> [B, C*sum(n^2)], differentiable.

    ``form="bins"`` (the default) uses the Appendix A bins, i.e. window SPP over the full map;
    ``adaptive_max_pool2d`` computes exactly these bins, for any map size. ``form="sliding"`` is
    the paper's section 2.3 description, max pooling with window ceil(a/n) and stride floor(a/n);
    it gives the same bins only for some sizes (13 with {1, 2, 3, 6}: the paper's 224 input), can
    give more or fewer than n bins (a=10, n=6 gives 9) and can miss the last cells (a=11, n=3), so
    it raises ValueError where it does not agree with the bins form.
    """
    levels = check_pyramid(pyramid)
    if form not in ("bins", "sliding"):
        raise ValueError(f"unknown SPP form {form!r}: choose 'bins' or 'sliding'")
    height, width = maps.shape[-2:]
    parts = []
    for n in levels:
        if form == "sliding":
            if not (sliding_agrees(height, n) and sliding_agrees(width, n)):
                raise ValueError(
                    f"the sliding SPP form is not the Appendix A binning for a {height}x{width} "
                    f"map at level {n}; use form='bins'"
                )
            kernel = (math.ceil(height / n), math.ceil(width / n))
            pooled = F.max_pool2d(maps, kernel, stride=(height // n, width // n))
        else:
            pooled = F.adaptive_max_pool2d(maps, n)
        parts.append(pooled.flatten(1))
    return torch.cat(parts, 1)
