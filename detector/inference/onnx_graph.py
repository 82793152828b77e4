"""The recognition part of a trained detector as one traceable torch module, for ONNX export.

``Recognition`` computes, for one preprocessed image at one scale and windows given in that
resized image's pixels, what the ``detect`` stage computes for those windows at that scale:
conv5 by the trunk, the window -> cell mapping of ``spp.geometry`` (the model's rule, in float64
and in ``boxes_to_cells``'s order of operations, so the cells are the ones it gives), window SPP,
fc6/fc7 when the SVMs read them, the SVM margins (and the Platt probabilities when the SVMs are
calibrated) and the box regressors' deltas from pool5. Every step is an operator that
``torch.onnx`` exports and onnxruntime runs.

Pooling is ONNX's MaxRoiPool (torchvision's ``roi_pool``, which exports to it) on integer cell
corners with spatial scale 1. Its bin i of n over a window w cells wide is
[floor(i * b), ceil((i + 1) * b)) with b = w / n in float32, sppdet's bins
([floor(i w / n), ceil((i + 1) w / n)), ``spp.bins.level_bins``) wherever the float32 products
round to the exact integers. ``maxroipool_mismatch`` finds the first width where they do not:
none up to 65,536 cells for n = 1-6, 8-10, 12, 16 (the default pyramid 1, 2, 3, 6 included); 57
cells for n = 7, 29 for 11, 7 for 13 (the last bin reaches one cell past the window). Such a
level is pooled exactly another way: each of its bins as a 1 x 1 MaxRoiPool over the bin's own
cells (one ROI per bin, bins from ``level_bins``), which reads the same cells as the n x n
operator would and returns the same layout. A level that divides a finer one is that level's
r x r MaxPool (``spp.bins.level_plan``: its bins are unions of the finer bins, exactly), as in
``WindowPooler``: with the default pyramid only level 6 reads the map, which cut onnxruntime's
pooling time threefold on raccoon (its MaxRoiPool walks every cell of every bin).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.onnx.operators import shape_as_tensor
from torchvision.ops import roi_pool

from sppdet.detector.heads.bbox_reg import BoxRegressor
from sppdet.detector.heads.calibration import PlattScaling
from sppdet.detector.heads.fc import FcHead
from sppdet.detector.spp.bins import check_pyramid, level_bins, level_plan
from sppdet.detector.spp.geometry import CellGeometry

log = logging.getLogger(__name__)

# Map sides (cells) up to which the pooling is checked exact: 65,536 cells = 1 Mpx at stride 16,
# far beyond any max_size; the check is one float32 product per (width, bin).
MAX_MAP_CELLS = 1 << 16


def maxroipool_mismatch(n: int, max_cells: int = MAX_MAP_CELLS) -> int | None:
    """The narrowest window width (cells, up to MAX_CELLS) whose n bins under MaxRoiPool's float32
    arithmetic (onnxruntime's and torchvision's: b = float(w) / float(n), floor(i * b),
    ceil((i + 1) * b)) differ from sppdet's exact bins; None when every width agrees."""
    w = np.arange(1, max_cells + 1, dtype=np.int64)[:, None]
    i = np.arange(n, dtype=np.int64)[None]
    size = w.astype(np.float32) / np.float32(n)
    start = np.floor(i.astype(np.float32) * size).astype(np.int64)
    end = np.ceil((i + 1).astype(np.float32) * size).astype(np.int64)
    exact_end = -((-(i + 1) * w) // n)
    differs = ((start != i * w // n) | (end != exact_end)).any(axis=1)
    rows = np.nonzero(differs)[0]
    return None if len(rows) == 0 else int(w[rows[0], 0])


class WindowSpp(nn.Module):
    """Windows [N, 4] (float32 x1 y1 x2 y2, 0-based pixels of the image the conv map [1, C, h, w]
    was computed on) -> SPP features [N, C * sum(n^2)] in sppdet's layout: levels in pyramid
    order, each channel-major (c * n^2 + y * n + x)."""

    def __init__(
        self, geometry: CellGeometry, shift: float, pyramid: Sequence[int], channels: int
    ) -> None:
        super().__init__()
        self.stride = float(geometry.stride)
        self.offset0 = float(geometry.offset) + 1  # 1-based, as ``boxes_to_cells``
        self.shift = float(shift)
        self.pyramid = check_pyramid(pyramid)
        self.channels = int(channels)
        self.plan = level_plan(self.pyramid)
        self.per_bin = self.inexact_levels([n for n in self.pyramid if self.plan[n] is None])

    def pooling(self) -> dict[str, str]:
        """How each level is pooled, for the model's metadata."""
        ways = {}
        for n, source in self.plan.items():
            if source is not None:
                ways[str(n)] = f"MaxPool {source // n}x{source // n} of level {source}"
            elif n in self.per_bin:
                ways[str(n)] = "MaxRoiPool 1x1 per bin"
            else:
                ways[str(n)] = f"MaxRoiPool {n}x{n}"
        return ways

    @staticmethod
    def inexact_levels(pyramid: Sequence[int]) -> tuple[int, ...]:
        """The levels of PYRAMID (those pooled from the map) that MaxRoiPool's n x n bins would
        get wrong: pooled bin by bin, and logged."""
        levels = []
        for n in pyramid:
            width = maxroipool_mismatch(n)
            if width is not None:
                log.info(
                    "ONNX pooling: level %d is pooled bin by bin (1 x 1 MaxRoiPool per bin): "
                    "MaxRoiPool's float32 %dx%d bins differ from sppdet's from %d cells wide",
                    n, n, n, width,
                )  # fmt: skip
                levels.append(n)
        return tuple(levels)

    def cells(self, conv5: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
        """Inclusive cells [N, 4] int64 of WINDOWS on CONV5: ``boxes_to_cells`` with factor 1,
        the same float64 operations in the same order (so the same roundings)."""
        b = windows.to(torch.float64) + 1  # 1-based pixels
        lo = torch.floor((b[:, :2] - self.offset0 + self.shift) / self.stride + 0.5)
        hi = torch.ceil((b[:, 2:] - self.offset0 - self.shift) / self.stride - 0.5)
        degenerate = lo > hi
        # The mex truncates (l + r) / 2 toward zero; floor differs only for a negative sum,
        # whose middle is negative either way and clamped to cell 0 below.
        middle = torch.floor((lo + hi + 2) / 2) - 1
        lo = torch.where(degenerate, middle, lo)
        hi = torch.where(degenerate, middle, hi)
        size = shape_as_tensor(conv5)[2:].flip(0).to(torch.float64)  # (w, h), traced as Shape
        limit = size - 1
        lo = torch.minimum(torch.clamp(lo, min=0), limit)
        hi = torch.minimum(torch.clamp(hi, min=0), limit)
        return torch.cat([lo, hi], 1).to(torch.int64)

    def forward(self, conv5: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
        cells = self.cells(conv5, windows)
        rois = torch.cat([torch.zeros_like(cells[:, :1]), cells], 1).to(torch.float32)
        grids: dict[int, torch.Tensor] = {}  # level n: [N, C, n, n]
        for n, source in sorted(self.plan.items(), reverse=True):
            if source is not None:  # a max over r x r bins of a finer level (``level_plan``)
                grids[n] = F.max_pool2d(grids[source], source // n)
            elif n in self.per_bin:
                grids[n] = self._bin_by_bin(conv5, cells, n)
            else:
                grids[n] = roi_pool(conv5, rois, n, 1.0)
        return torch.cat([grids[n].flatten(1) for n in self.pyramid], 1)

    def _bin_by_bin(self, conv5: torch.Tensor, cells: torch.Tensor, n: int) -> torch.Tensor:
        """Level N [N, C, n, n] with one 1 x 1 MaxRoiPool per bin: the max over exactly the bin's
        cells."""
        xs, xe = level_bins(cells[:, 0], cells[:, 2], n)  # [N, n] each
        ys, ye = level_bins(cells[:, 1], cells[:, 3], n)
        grid = (-1, n, n)
        rois = torch.stack(
            [
                torch.zeros_like(xs[:, :1, None].expand(grid)),
                xs[:, None, :].expand(grid),
                ys[:, :, None].expand(grid),
                (xe - 1)[:, None, :].expand(grid),
                (ye - 1)[:, :, None].expand(grid),
            ],
            -1,
        ).reshape(-1, 5)  # window-major, then bin row y, then bin column x
        pooled = roi_pool(conv5, rois.to(torch.float32), 1, 1.0)  # [N * n * n, C, 1, 1]
        return pooled.reshape(-1, n, n, self.channels).permute(0, 3, 1, 2)


class Recognition(nn.Module):
    """Trunk -> window SPP -> [fc6, fc7] -> SVM margins [N, K] (+ Platt probabilities [N, K])
    and pool5 -> box regressors -> deltas [N, 4K] (class k: columns 4k .. 4k + 3)."""

    def __init__(
        self,
        trunk: nn.Module,
        spp: WindowSpp,
        head: FcHead | None,
        layer: str,
        svm: tuple[np.ndarray, np.ndarray, float],
        calibration: PlattScaling | None,
        regressor: tuple[BoxRegressor, float] | None,
    ) -> None:
        super().__init__()
        self.trunk, self.spp, self.head, self.layer = trunk, spp, head, layer
        weights, bias, self.svm_scale = svm
        self.register_buffer("svm_weights", torch.as_tensor(weights, dtype=torch.float32))
        self.register_buffer("svm_bias", torch.as_tensor(bias, dtype=torch.float32))
        self.calibrated = calibration is not None
        if calibration is not None:
            self.register_buffer("platt_a", torch.as_tensor(calibration.a, dtype=torch.float32))
            self.register_buffer("platt_b", torch.as_tensor(calibration.b, dtype=torch.float32))
        self.regresses = regressor is not None
        if regressor is not None:
            matrix, offset = folded_regressor(regressor[0])
            self.bbox_scale = float(regressor[1])
            self.register_buffer("bbox_matrix", torch.as_tensor(matrix, dtype=torch.float32))
            self.register_buffer("bbox_offset", torch.as_tensor(offset, dtype=torch.float32))

    @property
    def output_names(self) -> list[str]:
        return (
            ["scores"]
            + (["probabilities"] if self.calibrated else [])
            + (["deltas"] if self.regresses else [])
        )

    def forward(self, image: torch.Tensor, windows: torch.Tensor) -> tuple[torch.Tensor, ...]:
        pooled = self.spp(self.trunk(image), windows)
        x = pooled if self.head is None else self.head.features(pooled, self.layer)
        # WindowScorer.scores: features times the SVMs' scale, then the linear SVMs, float32
        margins = (x * self.svm_scale) @ self.svm_weights.T + self.svm_bias
        outputs = [margins]
        if self.calibrated:  # PlattScaling.probability_matrix
            outputs.append(torch.sigmoid(-(margins * self.platt_a + self.platt_b)))
        if self.regresses:
            outputs.append((pooled * self.bbox_scale) @ self.bbox_matrix + self.bbox_offset)
        return tuple(outputs)


def folded_regressor(regressor: BoxRegressor) -> tuple[np.ndarray, np.ndarray]:
    """The per-class ridge, un-whitening and mean as one affine map on pool5: (matrix [D, 4K],
    offset [4K]) with deltas = x @ matrix + offset; class k's columns are 4k .. 4k + 3 and are 0
    for a class without samples (``BoxRegressor.deltas``). Folded in float64."""
    weights = np.asarray(regressor.weights, np.float64)  # [K, D + 1, 4]
    folded = np.einsum("kdj,kjl->kdl", weights, regressor.unwhiten)  # [K, D + 1, 4]
    folded[:, -1] += regressor.target_mean
    folded[~np.asarray(regressor.trained, bool)] = 0.0
    matrix = folded[:, :-1].transpose(1, 0, 2).reshape(weights.shape[1] - 1, -1)
    return matrix, folded[:, -1].reshape(-1)
