"""Proposal numerics: ranking key, filters, box conventions, Selective Search, edges, EdgeBoxes."""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest_proposals import draw_scene

from sppdet.detector.boxes import iou_matrix
from sppdet.detector.config import ProposalConfig
from sppdet.detector.errors import SppdetError
from sppdet.proposals.edgeboxes import edge_boxes, edge_boxes_raw
from sppdet.proposals.edges import builtin_edge_maps, check_edge_model, structured_edge_maps
from sppdet.proposals.importer import rcnn_to_xyxy
from sppdet.proposals.methods import method_params, propose
from sppdet.proposals.ranking import (
    finalize,
    hierarchy_rank_keys,
    interleave_keys,
    storage_dtype,
)
from sppdet.proposals.selective_search import downscale, scale_back, segmentation_groups

SCENE = [(20, 15, 79, 74), (100, 60, 149, 109)]


@pytest.fixture(scope="module")
def scene() -> np.ndarray:
    return draw_scene(120, 160, SCENE, seed=3)


# ------------------------------------------------------------------------------- ranking


def test_finalize_clips_filters_sorts_dedupes_and_cuts() -> None:
    boxes = np.array(
        [
            [10, 10, 40, 40],  # key 3
            [0, 0, 15, 50],  # 16 px wide: dropped by min_side 20
            [-5, 2, 30.4, 60],  # clipped to x1 = 0, rounded x2 = 30; key 1
            [10, 10, 40, 40],  # duplicate with the better key 0: this copy is kept
            [50, 50, 120, 90],  # clipped to x2 = 99, y2 = 79; key 1, ties by coordinates
        ]
    )
    keys = np.array([3.0, 0.5, 1.0, 0.0, 1.0])
    out = finalize(boxes, keys, width=100, height=80, min_side=20, max_boxes=10)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(
        out, [[10, 10, 40, 40], [0, 2, 30, 60], [50, 50, 99, 79]]
    )  # key 0, then the two key-1 boxes by x1; the key-3 duplicate is gone
    assert len(finalize(boxes, keys, 100, 80, 20, max_boxes=2)) == 2
    assert finalize(np.zeros((0, 4)), np.zeros(0), 100, 80, 20, 5).shape == (0, 4)


def test_hierarchy_rank_keys_are_rnd_times_area_rank_and_ignore_input_order() -> None:
    group = np.array([[0, 0, 9, 9], [0, 0, 99, 99], [5, 5, 54, 54], [10, 0, 19, 9]], float)
    keys = hierarchy_rank_keys([group], seed=7)
    # canonical order: area descending, ties (the two 10x10 boxes) by x1 -> positions 1..4
    rnd = np.random.default_rng([7, 0]).random(4)
    expected = np.empty(4)
    expected[[1, 2, 0, 3]] = rnd * np.arange(1, 5)
    np.testing.assert_allclose(keys, expected)
    shuffled = group[[3, 1, 0, 2]]
    np.testing.assert_allclose(hierarchy_rank_keys([shuffled], seed=7), expected[[3, 1, 0, 2]])
    # each group draws from its own stream: adding a group leaves the first one's keys alone
    both = hierarchy_rank_keys([group, group[:2]], seed=7)
    np.testing.assert_allclose(both[:4], expected)
    assert not np.allclose(both[4:], expected[:2])


def test_interleave_keys_alternate_lists() -> None:
    keys = interleave_keys([3, 2])
    merged_order = np.argsort(keys, kind="stable")
    np.testing.assert_array_equal(merged_order, [0, 3, 1, 4, 2])  # a0 b0 a1 b1 a2


def test_scale_back_maps_pixel_extents() -> None:
    # a 2x downscale: small pixel 10 covers full pixels 20..21
    out = scale_back(np.array([[10, 5, 19, 9]]), (50, 60), (100, 120))
    np.testing.assert_allclose(out, [[20, 10, 39, 19]])


def test_rcnn_boxes_are_converted_to_zero_based_xyxy() -> None:
    np.testing.assert_array_equal(rcnn_to_xyxy(np.array([[1, 2, 30, 40]])), [[1, 0, 39, 29]])


def test_storage_dtype() -> None:
    assert storage_dtype(640, 480) is np.int16
    assert storage_dtype(32768, 10) is np.int16  # largest index 32767 still fits
    assert storage_dtype(40000, 10) is np.int32


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


# --------------------------------------------------------------------------------- edges


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


def test_edgeboxes_box_convention_and_objects(scene: np.ndarray) -> None:
    cfg = ProposalConfig(method="edgeboxes")
    edges, orientation = builtin_edge_maps(scene, cfg)
    raw, scores = edge_boxes_raw(edges, orientation, cfg)
    assert np.all(np.diff(scores) <= 0)
    boxes = edge_boxes(scene, cfg)
    # the full-resolution scene is below eb_max_side: boxes are the raw ones, filtered
    kept = {tuple(b) for b in raw[(raw[:, 2] - raw[:, 0] >= 19) & (raw[:, 3] - raw[:, 1] >= 19)]}
    assert {tuple(b) for b in boxes} <= kept
    assert iou_matrix(np.array(SCENE), boxes[:10]).max(axis=1).min() >= 0.7


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


# -------------------------------------------------------------------- structured-edge model

TINY_MODEL = """%YAML:1.0
options:
   stride: 2
   shrinkNumber: 2
   patchSize: 32
   patchInnerSize: 16
   numberOfGradientOrientations: 4
   gradientSmoothingRadius: 0
   regFeatureSmoothingRadius: 2
   ssFeatureSmoothingRadius: 8
   gradientNormalizationRadius: 4
   selfsimilarityGridSize: 5
   numberOfTrees: 1
   numberOfTreesToEvaluate: 1
childs:
   - [ 0 ]
featureIds:
   - [ 0 ]
thresholds:
   - [ 0. ]
edgeBoundaries:
   - [ 0, 16 ]
edgeBins:
   - [ 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15 ]
"""


def test_edge_model_files_are_checked(tmp_path: Path) -> None:
    with pytest.raises(SppdetError, match="edge model not found"):
        check_edge_model(tmp_path / "none.yml.gz")
    garbage = tmp_path / "garbage.yml.gz"
    garbage.write_bytes(b"\x00\x01 not a model")
    with pytest.raises(SppdetError, match="not a structured-edge model"):
        check_edge_model(garbage)
    no_trees = tmp_path / "other.yml"  # valid YAML that crashes OpenCV's loader (SIGFPE)
    no_trees.write_text("%YAML:1.0\n---\nfoo: 1\n")
    with pytest.raises(SppdetError, match=r"missing options\.stride") as info:
        check_edge_model(no_trees)
    assert "\n" not in str(info.value)


def test_a_structured_edge_model_drives_edgeboxes(tmp_path: Path, scene: np.ndarray) -> None:
    # A one-leaf forest that paints the first row of every patch: tests the plumbing only.
    model = tmp_path / "tiny.yml"
    model.write_text(TINY_MODEL)
    edges, orientation = structured_edge_maps(scene, model)
    assert edges.shape == scene.shape[:2] and edges.max() > 0
    assert orientation.min() >= 0 and orientation.max() <= np.pi + 1e-6
    boxes = edge_boxes(scene, ProposalConfig(method="edgeboxes"), model)
    assert boxes.ndim == 2 and boxes.shape[1] == 4
    np.testing.assert_array_equal(
        boxes, edge_boxes(scene, ProposalConfig(method="edgeboxes"), model)
    )
