"""Deterministic order, R-CNN filtering and de-duplication of proposal boxes.

Every method hands its boxes here with one sort key per box (lower = better). ``finalize`` rounds
and clips them to the image, drops boxes narrower or shorter than ``min_side`` pixels (the R-CNN
filter), sorts by (key, x1, y1, x2, y2), keeps the first copy of each duplicate and cuts the list
to ``max_boxes``. The output depends only on the boxes and keys, never on thread timing or on
``rand()``, so the same image gives the same bytes in any process.

Selective Search key. OpenCV ranks each region by ``rand() * level`` (its level counted from the
bottom of the merge tree) with C ``rand()``, so its order changes from run to run. We rank like
Uijlings et al. (IJCV 2013, "combining locations"): key = RND x hierarchy position, position 1 being
the top of the hierarchy. OpenCV does not return the hierarchy, so the position is the box's
rank by area (largest first) within its own segmentation: a merged region's box contains its
children's boxes, so area never grows down the tree and ranking by area respects the merge order.
RND comes from a PCG64 generator seeded with (ss_rank_seed, group index), drawn in that canonical
order. Boxes near the top of each hierarchy (large, object-like) tend to come first, while the
random factor still lets small boxes of every segmentation into a top-N cut.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

INT16_MAX = np.iinfo(np.int16).max


def box_areas(boxes: np.ndarray) -> np.ndarray:
    return (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)


def hierarchy_rank_keys(groups: Sequence[np.ndarray], seed: int) -> np.ndarray:
    """Sort keys RND x position for the concatenation of GROUPS (one [n, 4] array per segmentation).

    Position p in 1..n is the box's rank by area, largest first, ties by coordinates.
    """
    keys = []
    for index, boxes in enumerate(groups):
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        order = np.lexsort((boxes[:, 3], boxes[:, 2], boxes[:, 1], boxes[:, 0], -box_areas(boxes)))
        rnd = np.random.default_rng([seed, index]).random(len(boxes))
        key = np.empty(len(boxes))
        key[order] = rnd * np.arange(1, len(boxes) + 1)
        keys.append(key)
    return np.concatenate(keys) if keys else np.zeros((0,))


def finalize(
    boxes: np.ndarray,
    keys: np.ndarray,
    width: int,
    height: int,
    min_side: int,
    max_boxes: int,
) -> np.ndarray:
    """Round, clip, filter, sort, de-duplicate and cut BOXES [N, 4] (x1 y1 x2 y2, 0-based).

    Returns int32 [M, 4], best first.
    """
    boxes = np.rint(np.asarray(boxes, np.float64).reshape(-1, 4))
    keys = np.asarray(keys, np.float64).reshape(-1)
    boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, width - 1)
    boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, height - 1)
    boxes = boxes.astype(np.int32)
    wide = (boxes[:, 2] - boxes[:, 0] + 1 >= min_side) & (boxes[:, 3] - boxes[:, 1] + 1 >= min_side)
    boxes, keys = boxes[wide], keys[wide]
    order = np.lexsort((boxes[:, 3], boxes[:, 2], boxes[:, 1], boxes[:, 0], keys))
    boxes = boxes[order]
    if len(boxes):
        _, first = np.unique(boxes, axis=0, return_index=True)
        boxes = boxes[np.sort(first)]
    return boxes[:max_boxes]


def storage_dtype(width: int, height: int) -> type[np.integer]:
    """int16 holds every pixel index of images up to 32,767 px a side; int32 beyond."""
    return np.int16 if max(width, height) <= INT16_MAX + 1 else np.int32
