"""Tests of ``sppdet.proposals.combined`` (``ss+eb``)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from sppdet.detector.core.config import ProposalConfig
from sppdet.proposals import combined
from sppdet.proposals.combined import selective_search_and_edge_boxes
from sppdet.proposals.edgeboxes import edge_boxes
from sppdet.proposals.selective_search_rcnn import selective_search_rcnn


def first_copies(*lists: np.ndarray) -> list[tuple[int, ...]]:
    """The lists end to end with every box's later copies dropped, by a plain loop."""
    seen, out = set(), []
    for boxes in lists:
        for box in map(tuple, boxes.tolist()):
            if box not in seen:
                seen.add(box)
                out.append(box)
    return out


def test_ss_plus_eb_is_the_ss_list_then_the_new_eb_boxes(monkeypatch: pytest.MonkeyPatch) -> None:
    ss = np.array([[5, 5, 40, 40], [0, 0, 99, 79], [10, 20, 60, 70]], np.int32)
    eb = np.array([[1, 1, 30, 30], [0, 0, 99, 79], [2, 3, 50, 60], [1, 1, 30, 30]], np.int32)
    monkeypatch.setattr(combined, "selective_search_rcnn", lambda rgb, cfg: ss)
    monkeypatch.setattr(combined, "edge_boxes", lambda rgb, cfg, model: eb)
    both = selective_search_and_edge_boxes(np.zeros((80, 100, 3), np.uint8), ProposalConfig())
    expected = [[5, 5, 40, 40], [0, 0, 99, 79], [10, 20, 60, 70], [1, 1, 30, 30], [2, 3, 50, 60]]
    assert both.dtype == np.int32
    np.testing.assert_array_equal(both, expected)


def test_each_list_is_cut_to_max_boxes_so_the_union_may_hold_twice_that(
    scene: np.ndarray,
) -> None:
    cfg = ProposalConfig(method="ss+eb", max_boxes=12)
    ss, eb = selective_search_rcnn(scene, cfg), edge_boxes(scene, cfg)
    assert len(ss) == len(eb) == 12  # both methods find more than 12 on the scene
    both = selective_search_and_edge_boxes(scene, cfg)
    np.testing.assert_array_equal(both, first_copies(ss, eb))
    assert cfg.max_boxes < len(both) <= 2 * cfg.max_boxes
    uncut = selective_search_and_edge_boxes(scene, dataclasses.replace(cfg, max_boxes=2000))
    np.testing.assert_array_equal(uncut[:12], ss)  # the ranked Selective Search prefix
