"""EdgeBoxes (Zitnick & Dollar, ECCV 2014) through ``cv2.ximgproc.createEdgeBoxes``.

Edges come from the built-in detector (proposals/edges.py) or, with an edge model, from OpenCV's
structured-edge forest (proposals/structured_edges.py). EdgeBoxes runs on a copy whose longer
side is at most ``eb_max_side`` (VOC-sized, the scale its parameters were tuned at; its cost
grows with the pixel count).

OpenCV returns ``Rect(x + 1, y + 1, w, h)`` for a box that scored pixels x..x+w and y..y+h
(inclusive; the +1 is left over from the MATLAB original), so the 0-based box is
x1 = X - 1, x2 = X - 1 + W. The order is by score, best first, ties by coordinates.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sppdet.detector.core.config import ProposalConfig
from sppdet.proposals.contrib import ximgproc
from sppdet.proposals.edges import builtin_edge_maps
from sppdet.proposals.ranking import finalize
from sppdet.proposals.selective_search import downscale, scale_back
from sppdet.proposals.structured_edges import structured_edge_maps

# EdgeBoxes stops after this many boxes survive its NMS; ask for more than max_boxes so that
# the min-side filter on the full image still leaves max_boxes when there are that many.
OVERSAMPLE = 2
# The ProposalConfig fields this module reads (besides max_boxes and min_side; the built-in edge
# detector's own are edges.BUILTIN_EDGE_SETTINGS): they go into the fingerprints of the methods
# that run EdgeBoxes.
EDGE_BOXES_SETTINGS = (
    "eb_max_side", "eb_alpha", "eb_beta", "eb_min_score", "eb_max_aspect_ratio",
    "eb_min_box_area", "eb_edge_merge_thr", "eb_cluster_min_mag",
)  # fmt: skip


def edge_boxes_raw(
    edges: np.ndarray, orientation: np.ndarray, cfg: ProposalConfig
) -> tuple[np.ndarray, np.ndarray]:
    """EdgeBoxes on given maps: 0-based inclusive boxes [N, 4] (int64) and scores [N]."""
    detector = ximgproc().createEdgeBoxes(
        alpha=cfg.eb_alpha,
        beta=cfg.eb_beta,
        eta=1.0,
        minScore=cfg.eb_min_score,
        maxBoxes=cfg.max_boxes * OVERSAMPLE,
        edgeMergeThr=cfg.eb_edge_merge_thr,
        clusterMinMag=cfg.eb_cluster_min_mag,
        maxAspectRatio=cfg.eb_max_aspect_ratio,
        minBoxArea=cfg.eb_min_box_area,
    )
    rects, scores = detector.getBoundingBoxes(edges, orientation)
    rects = np.asarray(rects, np.int64).reshape(-1, 4)
    scores = np.asarray(scores, np.float64).reshape(-1) if len(rects) else np.zeros((0,))
    x1, y1 = rects[:, 0] - 1, rects[:, 1] - 1
    return np.stack([x1, y1, x1 + rects[:, 2], y1 + rects[:, 3]], axis=1), scores


def edge_boxes(
    rgb: np.ndarray, cfg: ProposalConfig, edge_model: str | Path | None = None
) -> np.ndarray:
    """EdgeBoxes of an RGB image: int32 [N, 4] x1 y1 x2 y2 on the full image, best first."""
    small = downscale(rgb, cfg.eb_max_side)
    if edge_model is None:
        edges, orientation = builtin_edge_maps(small, cfg)
    else:
        edges, orientation = structured_edge_maps(small, edge_model)
    boxes, scores = edge_boxes_raw(edges, orientation, cfg)
    height, width = rgb.shape[:2]
    full = scale_back(boxes, small.shape, rgb.shape)
    return finalize(full, -scores, width, height, cfg.min_side, cfg.max_boxes)
