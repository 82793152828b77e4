"""The proposal-method table: each method's function and the settings that define its output.

One ``ProposalMethod`` per ``--method`` value says how the method proposes, which
ProposalConfig fields decide its boxes (and so go into its store's fingerprint) and whether it
reads edge maps. Everything that depends on the method (the fingerprint params, the dispatch,
the ``--edge-model`` check, the CLI's choices) reads the table, so adding a method takes its own
module plus one entry in ``METHODS``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from sppdet.cache.fingerprint import file_hash
from sppdet.detector.core.config import ProposalConfig, as_dict
from sppdet.detector.core.errors import SppdetError
from sppdet.proposals.combined import selective_search_and_edge_boxes
from sppdet.proposals.edgeboxes import EDGE_BOXES_SETTINGS, edge_boxes
from sppdet.proposals.edges import BUILTIN_EDGE_SETTINGS
from sppdet.proposals.selective_search import SELECTIVE_SEARCH_SETTINGS, selective_search
from sppdet.proposals.selective_search_rcnn import (
    RCNN_SELECTIVE_SEARCH_SETTINGS,
    selective_search_rcnn,
)

# The version of the methods whose output has not changed since versions were first recorded;
# a method's own entry bumps it when its output changes for the same settings.
ALGORITHM_VERSION = 1
# Every method ends in ranking.finalize, which reads these.
COMMON_SETTINGS = ("max_boxes", "min_side")

# (RGB image, settings, structured-edge model or None) -> int32 [N, 4] x1 y1 x2 y2, best first.
ProposeFn = Callable[[np.ndarray, ProposalConfig, str | Path | None], np.ndarray]


@dataclass(frozen=True)
class ProposalMethod:
    """One row of the method table."""

    name: str  # the --method value, recorded in the store's params
    propose: ProposeFn
    settings: tuple[str, ...]  # the ProposalConfig fields it reads besides COMMON_SETTINGS
    # Reads edge maps: from --edge-model's forest when given, else from the built-in detector
    # (whose BUILTIN_EDGE_SETTINGS then decide the boxes too).
    uses_edges: bool = False
    # Recorded in the store's params: bumped when the boxes change for the same settings
    # (ranking key, filters, how lists are merged), so that older stores are recomputed.
    algorithm_version: int = ALGORITHM_VERSION


def _selective_search_fast(
    rgb: np.ndarray, cfg: ProposalConfig, edge_model: str | Path | None = None
) -> np.ndarray:
    return selective_search(rgb, cfg, quality=False)


def _selective_search_quality(
    rgb: np.ndarray, cfg: ProposalConfig, edge_model: str | Path | None = None
) -> np.ndarray:
    return selective_search(rgb, cfg, quality=True)


def _selective_search_rcnn(
    rgb: np.ndarray, cfg: ProposalConfig, edge_model: str | Path | None = None
) -> np.ndarray:
    return selective_search_rcnn(rgb, cfg)


METHODS: dict[str, ProposalMethod] = {
    method.name: method
    for method in (
        ProposalMethod("ss-fast", _selective_search_fast, SELECTIVE_SEARCH_SETTINGS),
        ProposalMethod("ss-quality", _selective_search_quality, SELECTIVE_SEARCH_SETTINGS),
        ProposalMethod("edgeboxes", edge_boxes, EDGE_BOXES_SETTINGS, uses_edges=True),
        ProposalMethod(
            "ss+eb",
            selective_search_and_edge_boxes,
            RCNN_SELECTIVE_SEARCH_SETTINGS + EDGE_BOXES_SETTINGS,
            uses_edges=True,
            algorithm_version=2,  # 2: ss-rcnn's list then EdgeBoxes' (1: ss-fast's, interleaved)
        ),
        ProposalMethod("ss-rcnn", _selective_search_rcnn, RCNN_SELECTIVE_SEARCH_SETTINGS),
    )
}


def proposal_method(name: str) -> ProposalMethod:
    """The table's entry for NAME; an unknown name is a user error that lists the known ones."""
    try:
        return METHODS[name]
    except KeyError:
        known = ", ".join(METHODS)
        raise SppdetError(f"unknown proposal method {name!r}: choose one of {known}") from None


def edge_methods() -> list[str]:
    """The names of the methods that read edge maps (the ones ``--edge-model`` is for)."""
    return [method.name for method in METHODS.values() if method.uses_edges]


def method_params(cfg: ProposalConfig, edge_model: str | Path | None = None) -> dict[str, Any]:
    """The settings that decide the boxes of ``cfg.method``: the store's params (and fingerprint).

    Only the fields the method reads are included, so changing an EdgeBoxes setting does not
    invalidate a Selective Search store. The OpenCV version is included: its segmentation may
    change between releases, and a store must not mix shards of two versions.
    """
    method = proposal_method(cfg.method)
    names = COMMON_SETTINGS + method.settings
    if method.uses_edges and edge_model is None:
        names += BUILTIN_EDGE_SETTINGS
    fields = as_dict(cfg)
    params: dict[str, Any] = {"method": method.name, **{name: fields[name] for name in names}}
    if method.uses_edges:
        params["edges"] = (
            "built-in" if edge_model is None else f"structured:{file_hash(edge_model)}"
        )
    params["opencv"] = cv2.__version__
    params["algorithm_version"] = method.algorithm_version
    return params


def propose(
    rgb: np.ndarray, cfg: ProposalConfig, edge_model: str | Path | None = None
) -> np.ndarray:
    """Proposals of one RGB image by ``cfg.method``: int32 [N, 4] x1 y1 x2 y2, best first."""
    return proposal_method(cfg.method).propose(rgb, cfg, edge_model)
