"""``ss+eb``: R-CNN's fast Selective Search boxes, then EdgeBoxes boxes, as one list.

The released SPP_net code (``roidb_from_voc.m``, ``load_proposals``) appends the EdgeBoxes list to
the Selective Search list of each image. Here each list is the output of its own method, cut to
``max_boxes`` there, so the concatenation holds up to 2 x ``max_boxes`` boxes: all Selective
Search boxes first (in their ranked order), then the EdgeBoxes boxes (best first). A box both
methods found is kept once, at its Selective Search place (the released code keeps both copies;
a duplicate only repeats a window's features).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sppdet.detector.core.config import ProposalConfig
from sppdet.proposals.edgeboxes import edge_boxes
from sppdet.proposals.ranking import finalize
from sppdet.proposals.selective_search_rcnn import selective_search_rcnn


def concatenate_unique(lists: list[np.ndarray], width: int, height: int) -> np.ndarray:
    """LISTS (int [n, 4] each, already filtered) end to end, each box's first copy kept."""
    boxes = np.concatenate(lists) if lists else np.zeros((0, 4))
    return finalize(boxes, np.arange(len(boxes)), width, height, 1, len(boxes))


def selective_search_and_edge_boxes(
    rgb: np.ndarray, cfg: ProposalConfig, edge_model: str | Path | None = None
) -> np.ndarray:
    """ss-rcnn's boxes then EdgeBoxes' boxes of RGB, de-duplicated: int32 [N, 4] with N up to
    2 x max_boxes."""
    lists = [selective_search_rcnn(rgb, cfg), edge_boxes(rgb, cfg, edge_model)]
    return concatenate_unique(lists, rgb.shape[1], rgb.shape[0])
