"""``ss+eb``: Selective Search and EdgeBoxes boxes in one ranked list.

The two ranked lists are merged by taking one box of each in turn (Selective Search first), so a
top-N cut keeps about N/2 of each; a box both methods found counts once, at its earlier place.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sppdet.detector.core.config import ProposalConfig
from sppdet.proposals.edgeboxes import edge_boxes
from sppdet.proposals.ranking import finalize, interleave_keys
from sppdet.proposals.selective_search import selective_search


def selective_search_and_edge_boxes(
    rgb: np.ndarray, cfg: ProposalConfig, edge_model: str | Path | None = None
) -> np.ndarray:
    """Fast Selective Search and EdgeBoxes boxes of RGB, interleaved: int32 [N, 4], best first."""
    lists = [selective_search(rgb, cfg), edge_boxes(rgb, cfg, edge_model)]
    height, width = rgb.shape[:2]
    keys = interleave_keys([len(b) for b in lists])
    return finalize(np.concatenate(lists), keys, width, height, cfg.min_side, cfg.max_boxes)
