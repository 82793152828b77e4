"""The proposal methods by name, and the settings that define each one's output.

``ss+eb`` merges the two ranked lists by taking one box of each in turn (Selective Search
first), so a top-N cut keeps about N/2 of each; a box both methods found counts once, at its
earlier place.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from sppdet.cache.fingerprint import file_hash
from sppdet.detector.core.config import ProposalConfig, as_dict
from sppdet.detector.core.errors import SppdetError
from sppdet.proposals.edgeboxes import edge_boxes
from sppdet.proposals.ranking import finalize, interleave_keys
from sppdet.proposals.selective_search import selective_search

METHODS = ("ss-fast", "ss-quality", "edgeboxes", "ss+eb")
# Bumped when the output of a method changes for the same settings (ranking key, filters).
ALGORITHM_VERSION = 1

_COMMON = ("max_boxes", "min_side")
_SS = ("ss_max_side", "ss_base_k", "ss_inc_k", "ss_sigma", "ss_min_region", "ss_rank_seed")
_EB = ("eb_max_side", "eb_alpha", "eb_beta", "eb_min_score", "eb_max_aspect_ratio",
       "eb_min_box_area", "eb_edge_merge_thr", "eb_cluster_min_mag")  # fmt: skip
_EDGES = ("edge_sigmas", "edge_norm_radius", "edge_percentile", "edge_gamma")


def check_method(method: str) -> str:
    if method not in METHODS:
        raise SppdetError(f"unknown proposal method {method!r}: choose one of {', '.join(METHODS)}")
    return method


def uses_edges(method: str) -> bool:
    return method in ("edgeboxes", "ss+eb")


def method_params(cfg: ProposalConfig, edge_model: str | Path | None = None) -> dict[str, Any]:
    """The settings that decide the boxes of METHOD: the store's params (and fingerprint).

    Only the fields the method reads are included, so changing an EdgeBoxes setting does not
    invalidate a Selective Search store. The OpenCV version is included: its segmentation may
    change between releases, and a store must not mix shards of two versions.
    """
    method = check_method(cfg.method)
    fields = dict(as_dict(cfg))
    names = list(_COMMON)
    if method != "edgeboxes":
        names += _SS
    if uses_edges(method):
        names += _EB
        if edge_model is None:
            names += _EDGES
    params: dict[str, Any] = {"method": method, **{name: fields[name] for name in names}}
    if uses_edges(method):
        params["edges"] = (
            "built-in" if edge_model is None else f"structured:{file_hash(edge_model)}"
        )
    params["opencv"] = cv2.__version__
    params["algorithm_version"] = ALGORITHM_VERSION
    return params


def propose(
    rgb: np.ndarray, cfg: ProposalConfig, edge_model: str | Path | None = None
) -> np.ndarray:
    """Proposals of one RGB image by ``cfg.method``: int32 [N, 4] x1 y1 x2 y2, best first."""
    method = check_method(cfg.method)
    if method in ("ss-fast", "ss-quality"):
        return selective_search(rgb, cfg, quality=method == "ss-quality")
    if method == "edgeboxes":
        return edge_boxes(rgb, cfg, edge_model)
    lists = [selective_search(rgb, cfg), edge_boxes(rgb, cfg, edge_model)]
    height, width = rgb.shape[:2]
    keys = interleave_keys([len(b) for b in lists])
    return finalize(np.concatenate(lists), keys, width, height, cfg.min_side, cfg.max_boxes)
