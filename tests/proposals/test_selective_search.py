"""Tests of ``sppdet.proposals.selective_search``."""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses

import numpy as np

from sppdet.detector.core.boxes import iou_matrix
from sppdet.detector.core.config import ProposalConfig
from sppdet.proposals.selective_search import (
    downscale,
    scale_back,
    segmentation_groups,
    selective_search,
)
from tests.proposals.shared import SCENE


def test_scale_back_maps_pixel_extents() -> None:
    # a 2x downscale: small pixel 10 covers full pixels 20..21
    out = scale_back(np.array([[10, 5, 19, 9]]), (50, 60), (100, 120))
    np.testing.assert_allclose(out, [[20, 10, 39, 19]])


def test_selective_search_runs_on_a_downscaled_copy(scene: np.ndarray) -> None:
    big = np.repeat(np.repeat(scene, 2, axis=0), 2, axis=1)  # 320x240, exactly 2x the scene
    cfg = ProposalConfig(method="ss-fast", ss_max_side=160, min_side=1)
    assert np.array_equal(downscale(big, 160), scene)  # area averaging undoes the 2x
    native = {tuple(b) for g in segmentation_groups(scene, cfg, quality=False) for b in g}
    boxes = selective_search(big, cfg)
    halved = np.stack(
        [boxes[:, 0] / 2, boxes[:, 1] / 2, (boxes[:, 2] + 1) / 2 - 1, (boxes[:, 3] + 1) / 2 - 1], 1
    )
    assert len(boxes) == len(native)
    assert {tuple(int(v) for v in b) for b in halved} == native


def _libc_srand(seed: int) -> None:
    ctypes.CDLL(ctypes.util.find_library("c")).srand(seed)


def test_selective_search_order_does_not_depend_on_c_rand(scene: np.ndarray) -> None:
    cfg = ProposalConfig(method="ss-fast")
    _libc_srand(1)
    raw_a = segmentation_groups(scene, cfg, quality=False)
    first = selective_search(scene, cfg)
    _libc_srand(987654)
    raw_b = segmentation_groups(scene, cfg, quality=False)
    second = selective_search(scene, cfg)
    # OpenCV's own order follows rand() (so this test can fail), ours does not
    assert any(not np.array_equal(a, b) for a, b in zip(raw_a, raw_b, strict=True))
    assert all(
        np.array_equal(np.unique(a, axis=0), np.unique(b, axis=0))
        for a, b in zip(raw_a, raw_b, strict=True)
    )
    np.testing.assert_array_equal(first, second)


def test_selective_search_finds_objects_and_filters(scene: np.ndarray) -> None:
    cfg = ProposalConfig(method="ss-fast")
    boxes = selective_search(scene, cfg)
    assert boxes.dtype == np.int32 and boxes.shape[1] == 4 and 5 < len(boxes) <= cfg.max_boxes
    widths, heights = boxes[:, 2] - boxes[:, 0] + 1, boxes[:, 3] - boxes[:, 1] + 1
    assert widths.min() >= cfg.min_side and heights.min() >= cfg.min_side
    assert boxes[:, :2].min() >= 0 and boxes[:, 2].max() <= 159 and boxes[:, 3].max() <= 119
    assert len(np.unique(boxes, axis=0)) == len(boxes)
    np.testing.assert_allclose(iou_matrix(np.array(SCENE), boxes).max(axis=1), 1.0)
    small = selective_search(scene, dataclasses.replace(cfg, max_boxes=5))
    np.testing.assert_array_equal(small, boxes[:5])  # the cut keeps the best-first prefix


def test_ss_quality_uses_more_segmentations(scene: np.ndarray) -> None:
    cfg = ProposalConfig(method="ss-quality")
    assert len(segmentation_groups(scene, cfg, quality=True)) == 25  # 5 colour spaces x 5 ks
    assert len(segmentation_groups(scene, cfg, quality=False)) == 6  # 2 x 3
    boxes = selective_search(scene, cfg, quality=True)
    np.testing.assert_allclose(iou_matrix(np.array(SCENE), boxes).max(axis=1), 1.0)
