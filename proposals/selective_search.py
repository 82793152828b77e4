"""Selective Search (Uijlings et al., IJCV 2013) through OpenCV contrib, with a reproducible order.

The diversification is OpenCV's own ``switchToSelectiveSearchFast`` / ``Quality``: colour spaces
(HSV, Lab; quality adds intensity, hue and rgI), Felzenszwalb thresholds k = base_k + i * inc_k,
and the similarity strategies (colour+fill+texture+size and fill+texture+size; quality adds fill
and size alone). We run one OpenCV call per (colour space, k) segmentation instead of one for
all, which costs the same (the segmentation is shared by the strategies either way) and tells us
which segmentation produced which box: the ranking key needs that (proposals/ranking.py).

Search runs on a copy whose longer side is at most ``ss_max_side`` pixels (Selective Search is
roughly linear in the pixel count and its boxes are coarse at any resolution); the boxes are
mapped back to the full image before filtering.
"""

from __future__ import annotations

import cv2
import numpy as np

from sppdet.detector.core.config import ProposalConfig
from sppdet.proposals.contrib import segmentation
from sppdet.proposals.ranking import finalize, hierarchy_rank_keys

# The ProposalConfig fields this module reads (besides max_boxes and min_side): they decide the
# boxes of every method that runs Selective Search, so they go into those methods' fingerprints.
SELECTIVE_SEARCH_SETTINGS = (
    "ss_max_side", "ss_base_k", "ss_inc_k", "ss_sigma", "ss_min_region", "ss_rank_seed",
)  # fmt: skip


def downscale(rgb: np.ndarray, max_side: int) -> np.ndarray:
    """RGB with its longer side capped at MAX_SIDE (area interpolation), or RGB itself."""
    height, width = rgb.shape[:2]
    scale = max_side / max(height, width)
    if scale >= 1:
        return rgb
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


def scale_back(
    boxes: np.ndarray, small_shape: tuple[int, ...], full_shape: tuple[int, ...]
) -> np.ndarray:
    """Map inclusive pixel boxes of a resized image onto the full image (float64).

    Pixel i of the small image spans [i, i + 1) * f on the full one, so x1 -> x1 * f and
    x2 -> (x2 + 1) * f - 1.
    """
    fx = full_shape[1] / small_shape[1]
    fy = full_shape[0] / small_shape[0]
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.stack(
        [
            boxes[:, 0] * fx,
            boxes[:, 1] * fy,
            (boxes[:, 2] + 1) * fx - 1,
            (boxes[:, 3] + 1) * fy - 1,
        ],
        axis=1,
    )


def _colour_images(rgb: np.ndarray, quality: bool) -> list[np.ndarray]:
    # The conversions OpenCV's switchToSelectiveSearch* make from its BGR base image.
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    images = [hsv, cv2.cvtColor(rgb, cv2.COLOR_RGB2Lab)]
    if quality:
        grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        rg_i = np.dstack([rgb[:, :, 0], rgb[:, :, 1], grey])
        images += [grey, np.ascontiguousarray(hsv[:, :, 0]), rg_i]
    return images


def _strategies(quality: bool) -> list[object]:
    seg = segmentation()
    colour = seg.createSelectiveSearchSegmentationStrategyColor
    fill = seg.createSelectiveSearchSegmentationStrategyFill
    texture = seg.createSelectiveSearchSegmentationStrategyTexture
    size = seg.createSelectiveSearchSegmentationStrategySize
    multiple = seg.createSelectiveSearchSegmentationStrategyMultiple
    strategies = [
        multiple(colour(), fill(), texture(), size()),
        multiple(fill(), texture(), size()),
    ]
    if quality:
        strategies += [fill(), size()]
    return strategies


def segmentation_groups(rgb: np.ndarray, cfg: ProposalConfig, quality: bool) -> list[np.ndarray]:
    """The boxes of each (colour space, k) segmentation of RGB, int [n, 4] inclusive x1 y1 x2 y2.

    Groups come in OpenCV's loop order (colour space outer, k inner); within a group, boxes are
    in OpenCV's (random) order, which the ranking key makes irrelevant.
    """
    ks = [cfg.ss_base_k + i * cfg.ss_inc_k for i in range(5 if quality else 3)]
    seg = segmentation()
    groups = []
    for image in _colour_images(rgb, quality):
        for k in ks:
            search = seg.createSelectiveSearchSegmentation()
            search.addImage(image)
            search.addGraphSegmentation(
                seg.createGraphSegmentation(cfg.ss_sigma, float(k), cfg.ss_min_region)
            )
            for strategy in _strategies(quality):
                search.addStrategy(strategy)
            rects = np.asarray(search.process(), np.int64).reshape(-1, 4)  # x, y, w, h
            groups.append(np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:] - 1], axis=1))
    return groups


def selective_search(rgb: np.ndarray, cfg: ProposalConfig, quality: bool = False) -> np.ndarray:
    """Selective Search boxes of an RGB image: int32 [N, 4] x1 y1 x2 y2, best first."""
    small = downscale(rgb, cfg.ss_max_side)
    groups = [
        scale_back(group, small.shape, rgb.shape)
        for group in segmentation_groups(small, cfg, quality)
    ]
    keys = hierarchy_rank_keys(groups, cfg.ss_rank_seed)
    boxes = np.concatenate(groups) if groups else np.zeros((0, 4))
    height, width = rgb.shape[:2]
    return finalize(boxes, keys, width, height, cfg.min_side, cfg.max_boxes)
