"""Tests of ``sppdet.proposals.edges``."""

from __future__ import annotations

import numpy as np

from sppdet.detector.core.config import ProposalConfig
from sppdet.proposals.edges import builtin_edge_maps


def test_builtin_edges_are_thin_normalised_and_oriented() -> None:
    rgb = np.full((60, 80, 3), 60, np.uint8)
    rgb[:, 40:] = 200  # vertical step between columns 39 and 40
    rgb[45:, :] = (30, 160, 30)  # horizontal colour step between rows 44 and 45
    edges, orientation = builtin_edge_maps(rgb, ProposalConfig())
    assert edges.dtype == np.float32 and orientation.dtype == np.float32
    assert edges.min() >= 0 and edges.max() <= 1 and np.isfinite(edges).all()
    rows = edges[10:35]
    assert (rows[:, 39] > 0.5).all() and (rows[:, 40] > 0.5).all()  # the step, both sides
    assert (rows[:, :37] == 0).all() and (rows[:, 43:] == 0).all()  # thinned elsewhere
    across = orientation[10:35, 39]
    np.testing.assert_allclose(np.minimum(across, np.pi - across), 0, atol=0.05)  # normal along x
    np.testing.assert_allclose(orientation[44, 5:30], np.pi / 2, atol=0.05)  # normal along y
    flat_edges, _ = builtin_edge_maps(np.full((30, 30, 3), 90, np.uint8), ProposalConfig())
    assert flat_edges.max() < 1e-6  # rounding noise is not stretched into edges
