"""Tests of ``sppdet.proposals.combined`` (``ss+eb``)."""

from __future__ import annotations

import numpy as np

from sppdet.detector.core.config import ProposalConfig
from sppdet.proposals.combined import selective_search_and_edge_boxes
from sppdet.proposals.edgeboxes import edge_boxes
from sppdet.proposals.selective_search import selective_search


def test_ss_plus_eb_interleaves_both_lists(scene: np.ndarray) -> None:
    cfg = ProposalConfig(method="ss+eb")
    ss = selective_search(scene, cfg)
    eb = edge_boxes(scene, cfg)
    both = selective_search_and_edge_boxes(scene, cfg)
    np.testing.assert_array_equal(both[0], ss[0])
    second = eb[0] if not (ss[:1] == eb[0]).all(axis=1).any() else ss[1]
    np.testing.assert_array_equal(both[1], second)
    assert len(both) == len(np.unique(np.concatenate([ss, eb]), axis=0))
