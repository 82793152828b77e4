"""Best scale: at which cached scale each window is pooled.

Two rules over an image's effective scales (the resized shorter sides, in cache order):
"released", the released code's, picks the scale nearest to ``round(208 * min(H, W) /
sqrt(area))``; "area224", the paper's, picks the scale whose scaled window area is closest to
224 x 224. A tie goes to the smaller scale.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SCALE_RULES = ("released", "area224")


def window_areas(boxes: np.ndarray) -> np.ndarray:
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    return (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)


def _closest(distance: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """Per row the scale index of least distance; a tie goes to the smaller scale."""
    best = distance.min(1, keepdims=True)
    tied = np.where(np.isclose(distance, best, rtol=0, atol=1e-9), scales[None, :], np.inf)
    return tied.argmin(1).astype(np.int64)


def best_scale_released(
    boxes: np.ndarray, min_side: float, scales: Sequence[float], target_side: float = 13 * 16
) -> np.ndarray:
    """Released rule: expected = round(208 * min(H, W) / sqrt(area)); least |s - expected|.

    ``round`` is half away from zero, as in MATLAB and Lua (numpy's round is half to even).
    """
    scales = np.asarray(scales, np.float64)
    expected = np.floor(target_side * min_side / np.sqrt(window_areas(boxes)) + 0.5)
    return _closest(np.abs(scales[None, :] - expected[:, None]), scales)


def best_scale_area(
    boxes: np.ndarray, min_side: float, scales: Sequence[float], target: float = 224
) -> np.ndarray:
    """Paper rule: the scale whose scaled window pixel count is closest to 224 x 224."""
    scales = np.asarray(scales, np.float64)
    scaled = window_areas(boxes)[:, None] * (scales[None, :] / min_side) ** 2
    return _closest(np.abs(scaled - target * target), scales)


def best_scale(
    boxes: np.ndarray,
    min_side: float,
    scales: Sequence[float],
    rule: str = "released",
    area_target: float = 224,
    released_target_side: float = 13 * 16,
) -> np.ndarray:
    """Scale index per window [N] under RULE ("released" or "area224"), over SCALES (the
    effective scales of this image, in cache order)."""
    if rule == "released":
        return best_scale_released(boxes, min_side, scales, released_target_side)
    if rule == "area224":
        return best_scale_area(boxes, min_side, scales, area_target)
    raise ValueError(f"unknown scale rule {rule!r}; choose one of {SCALE_RULES}")
