"""Tests of ``sppdet.proposals.selective_search``."""

from __future__ import annotations

import numpy as np

from sppdet.detector.core.config import ProposalConfig
from sppdet.proposals.methods import propose
from sppdet.proposals.selective_search import downscale, scale_back, segmentation_groups


def test_scale_back_maps_pixel_extents() -> None:
    # a 2x downscale: small pixel 10 covers full pixels 20..21
    out = scale_back(np.array([[10, 5, 19, 9]]), (50, 60), (100, 120))
    np.testing.assert_allclose(out, [[20, 10, 39, 19]])


def test_selective_search_runs_on_a_downscaled_copy(scene: np.ndarray) -> None:
    big = np.repeat(np.repeat(scene, 2, axis=0), 2, axis=1)  # 320x240, exactly 2x the scene
    cfg = ProposalConfig(method="ss-fast", ss_max_side=160, min_side=1)
    assert np.array_equal(downscale(big, 160), scene)  # area averaging undoes the 2x
    native = {tuple(b) for g in segmentation_groups(scene, cfg, quality=False) for b in g}
    boxes = propose(big, cfg)
    halved = np.stack(
        [boxes[:, 0] / 2, boxes[:, 1] / 2, (boxes[:, 2] + 1) / 2 - 1, (boxes[:, 3] + 1) / 2 - 1], 1
    )
    assert len(boxes) == len(native)
    assert {tuple(int(v) for v in b) for b in halved} == native
