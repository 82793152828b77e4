"""``ss-rcnn``: R-CNN's "fast" Selective Search (``selective_search_boxes.m``) through OpenCV.

As there: the image resized to width ``ss_rcnn_width`` = 500 (narrower images only with
``ss_rcnn_enlarge``, as R-CNN's demo does; SPP_net's detector and R-CNN's batch script search
them as they are), Felzenszwalb segmentations with sigma ``ss_sigma`` = 0.8 and k in
``ss_rcnn_ks`` = {50, 100} with minimum region size k, colour spaces HSV and Lab, two similarity
sets (colour+texture+size+fill and texture+size+fill), one hierarchical grouping per (k, colour
space, similarity set) in that loop order; all boxes ranked by hierarchy position x a random
number, boxes under ``min_side`` px wide or tall at the working width dropped, duplicates
removed, then mapped back to the image. The released and paper presets drop under 20 px, as
R-CNN (config.RCNN_PROPOSALS); the defaults drop under 10 px, which keeps the boxes of objects
15-20 px wide (BENCHMARKS.md). OpenCV's ``switchToSelectiveSearchFast`` (``ss-fast``) differs:
k = 150, 300, 450 with min size 100.

OpenCV's ``SelectiveSearchSegmentation`` is given one colour image, one graph segmentation and
one strategy per call, so each call returns exactly one hierarchy: the ranking key needs the
hierarchy a box came from (proposals/ranking.py). Segmenting once per similarity set instead of
once for both costs one Felzenszwalb pass more per (k, colour space), a small share of the time.
"""

from __future__ import annotations

import cv2
import numpy as np

from sppdet.detector.core.config import ProposalConfig
from sppdet.proposals.contrib import segmentation
from sppdet.proposals.ranking import finalize, hierarchy_rank_keys
from sppdet.proposals.selective_search import scale_back

# The ProposalConfig fields this module reads (besides max_boxes and min_side): they go into the
# fingerprint of every method that runs it.
RCNN_SELECTIVE_SEARCH_SETTINGS = (
    "ss_rcnn_width", "ss_rcnn_enlarge", "ss_rcnn_ks", "ss_sigma", "ss_rank_seed",
)  # fmt: skip
# selective_search_boxes.m's fast mode: colorTypes(1:2) and simFunctionHandles(1:2).
COLOUR_SPACES: dict[str, int] = {"hsv": cv2.COLOR_RGB2HSV, "lab": cv2.COLOR_RGB2Lab}
SIMILARITY_SETS: dict[str, tuple[str, ...]] = {
    "colour+texture+size+fill": ("colour", "texture", "size", "fill"),
    "texture+size+fill": ("texture", "size", "fill"),
}
# OpenCV's factory of each similarity, in cv2.ximgproc.segmentation.
_STRATEGIES: dict[str, str] = {
    "colour": "createSelectiveSearchSegmentationStrategyColor",
    "texture": "createSelectiveSearchSegmentationStrategyTexture",
    "size": "createSelectiveSearchSegmentationStrategySize",
    "fill": "createSelectiveSearchSegmentationStrategyFill",
}


def resize_to_width(rgb: np.ndarray, width: int, enlarge: bool) -> np.ndarray:
    """RGB resized to WIDTH px wide, aspect kept (MATLAB's ``imresize(im, [NaN width])``); RGB
    itself when WIDTH is 0, already its width, or larger and not ENLARGE. Area averaging when
    shrinking, bicubic when enlarging (imresize is bicubic, antialiased when shrinking)."""
    height, old_width = rgb.shape[:2]
    if width <= 0 or width == old_width or (width > old_width and not enlarge):
        return rgb
    size = (width, max(1, round(height * width / old_width)))
    interpolation = cv2.INTER_AREA if width < old_width else cv2.INTER_CUBIC
    return cv2.resize(rgb, size, interpolation=interpolation)


def similarity_strategy(name: str) -> object:
    """OpenCV's strategy for one similarity set of SIMILARITY_SETS (an equal-weight sum)."""
    seg = segmentation()
    parts = [getattr(seg, _STRATEGIES[part])() for part in SIMILARITY_SETS[name]]
    return seg.createSelectiveSearchSegmentationStrategyMultiple(*parts)


def hierarchy_boxes(image: np.ndarray, sigma: float, k: int, similarity: str) -> np.ndarray:
    """The boxes of one hierarchical grouping of IMAGE (already in its colour space), seeded by a
    Felzenszwalb segmentation with min size = K: int64 [n, 4] inclusive x1 y1 x2 y2."""
    seg = segmentation()
    search = seg.createSelectiveSearchSegmentation()
    search.addImage(image)
    search.addGraphSegmentation(seg.createGraphSegmentation(sigma, float(k), int(k)))
    search.addStrategy(similarity_strategy(similarity))
    rects = np.asarray(search.process(), np.int64).reshape(-1, 4)  # x, y, w, h
    return np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:] - 1], axis=1)


def rcnn_hierarchies(rgb: np.ndarray, cfg: ProposalConfig) -> list[np.ndarray]:
    """The boxes of every hierarchy of RGB, in selective_search_boxes.m's loop order: k outer,
    colour space, then similarity set."""
    images = {name: cv2.cvtColor(rgb, code) for name, code in COLOUR_SPACES.items()}
    return [
        hierarchy_boxes(images[colour], cfg.ss_sigma, k, similarity)
        for k in cfg.ss_rcnn_ks
        for colour in COLOUR_SPACES
        for similarity in SIMILARITY_SETS
    ]


def selective_search_rcnn(rgb: np.ndarray, cfg: ProposalConfig) -> np.ndarray:
    """R-CNN's fast Selective Search boxes of an RGB image: int32 [N, 4] x1 y1 x2 y2, best first."""
    work = resize_to_width(rgb, cfg.ss_rcnn_width, cfg.ss_rcnn_enlarge)
    groups = rcnn_hierarchies(work, cfg)
    keys = hierarchy_rank_keys(groups, cfg.ss_rank_seed)
    boxes = np.concatenate(groups) if groups else np.zeros((0, 4))
    height, width = work.shape[:2]
    # Ranked, filtered and de-duplicated at the working width, as in R-CNN; then mapped back,
    # where rounding may merge two boxes (the first is kept) and no size filter applies again.
    ranked = finalize(boxes, keys, width, height, cfg.min_side, len(boxes))
    full = scale_back(ranked, work.shape, rgb.shape)
    return finalize(full, np.arange(len(full)), rgb.shape[1], rgb.shape[0], 1, cfg.max_boxes)
