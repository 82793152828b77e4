"""Tests of ``sppdet.proposals.methods``.

Proposal numerics: ranking key, filters, box conventions, Selective Search, edges, EdgeBoxes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest

from sppdet.detector.core.boxes import iou_matrix
from sppdet.detector.core.config import ProposalConfig
from sppdet.proposals.methods import method_params, propose
from sppdet.proposals.selective_search import segmentation_groups
from tests.proposals.shared import SCENE

# ------------------------------------------------------------------------- selective search


def _libc_srand(seed: int) -> None:
    ctypes.CDLL(ctypes.util.find_library("c")).srand(seed)


def test_selective_search_order_does_not_depend_on_c_rand(scene: np.ndarray) -> None:
    cfg = ProposalConfig(method="ss-fast")
    _libc_srand(1)
    raw_a = segmentation_groups(scene, cfg, quality=False)
    first = propose(scene, cfg)
    _libc_srand(987654)
    raw_b = segmentation_groups(scene, cfg, quality=False)
    second = propose(scene, cfg)
    # OpenCV's own order follows rand() (so this test can fail), ours does not
    assert any(not np.array_equal(a, b) for a, b in zip(raw_a, raw_b, strict=True))
    assert all(
        np.array_equal(np.unique(a, axis=0), np.unique(b, axis=0))
        for a, b in zip(raw_a, raw_b, strict=True)
    )
    np.testing.assert_array_equal(first, second)


def test_selective_search_finds_objects_and_filters(scene: np.ndarray) -> None:
    cfg = ProposalConfig(method="ss-fast")
    boxes = propose(scene, cfg)
    assert boxes.dtype == np.int32 and boxes.shape[1] == 4 and 5 < len(boxes) <= cfg.max_boxes
    widths, heights = boxes[:, 2] - boxes[:, 0] + 1, boxes[:, 3] - boxes[:, 1] + 1
    assert widths.min() >= cfg.min_side and heights.min() >= cfg.min_side
    assert boxes[:, :2].min() >= 0 and boxes[:, 2].max() <= 159 and boxes[:, 3].max() <= 119
    assert len(np.unique(boxes, axis=0)) == len(boxes)
    np.testing.assert_allclose(iou_matrix(np.array(SCENE), boxes).max(axis=1), 1.0)
    small = propose(scene, dataclasses.replace(cfg, max_boxes=5))
    np.testing.assert_array_equal(small, boxes[:5])  # the cut keeps the best-first prefix


def test_ss_quality_uses_more_segmentations(scene: np.ndarray) -> None:
    cfg = ProposalConfig(method="ss-quality")
    assert len(segmentation_groups(scene, cfg, quality=True)) == 25  # 5 colour spaces x 5 ks
    assert len(segmentation_groups(scene, cfg, quality=False)) == 6  # 2 x 3
    boxes = propose(scene, cfg)
    np.testing.assert_allclose(iou_matrix(np.array(SCENE), boxes).max(axis=1), 1.0)


@pytest.mark.parametrize("method", ["ss-fast", "ss-quality", "edgeboxes", "ss+eb"])
@pytest.mark.parametrize("shape", [(1, 1), (12, 9), (40, 18)])
def test_tiny_images_give_no_boxes_or_valid_ones(method: str, shape: tuple[int, int]) -> None:
    rgb = np.random.default_rng(0).integers(0, 255, (*shape, 3)).astype(np.uint8)
    boxes = propose(rgb, ProposalConfig(method=method))
    assert boxes.shape[1] == 4
    assert len(boxes) == 0 or (boxes[:, 2] - boxes[:, 0] + 1).min() >= 20


def test_ss_plus_eb_interleaves_both_lists(scene: np.ndarray) -> None:
    ss = propose(scene, ProposalConfig(method="ss-fast"))
    eb = propose(scene, ProposalConfig(method="edgeboxes"))
    both = propose(scene, ProposalConfig(method="ss+eb"))
    np.testing.assert_array_equal(both[0], ss[0])
    second = eb[0] if not (ss[:1] == eb[0]).all(axis=1).any() else ss[1]
    np.testing.assert_array_equal(both[1], second)
    assert len(both) == len(np.unique(np.concatenate([ss, eb]), axis=0))


def test_method_params_hold_only_what_decides_the_boxes(tmp_path: Path) -> None:
    ss = method_params(ProposalConfig(method="ss-fast"))
    assert ss["method"] == "ss-fast" and "ss_base_k" in ss and "eb_alpha" not in ss
    eb = method_params(ProposalConfig(method="edgeboxes"))
    assert eb["edges"] == "built-in" and "edge_sigmas" in eb and "ss_base_k" not in eb
    model = tmp_path / "m.yml"
    model.write_text("%YAML:1.0\n")
    with_model = method_params(ProposalConfig(method="ss+eb"), model)
    assert with_model["edges"].startswith("structured:") and "edge_sigmas" not in with_model
    assert ss["opencv"] == cv2.__version__
