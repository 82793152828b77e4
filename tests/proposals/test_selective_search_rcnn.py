"""Tests of ``sppdet.proposals.selective_search_rcnn`` (``ss-rcnn``, R-CNN's fast mode)."""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses

import cv2
import numpy as np
import pytest

from sppdet.detector.core.config import ProposalConfig, preset
from sppdet.detector.data.crowded import render_crowded
from sppdet.proposals.selective_search_rcnn import (
    rcnn_hierarchies,
    resize_to_width,
    selective_search_rcnn,
)

SEG = cv2.ximgproc.segmentation
# selective_search_boxes.m, fast mode, written out here rather than taken from the library:
# ks = [50 100] with minSize = k, sigma 0.8, colorTypes {'Hsv', 'Lab'}, similarity functions
# SSSimColourTextureSizeFillOrig and SSSimTextureSizeFill; loops k outer, then colour type.
RCNN_KS = (50, 100)
RCNN_SIGMA = 0.8
RCNN_COLOURS = (cv2.COLOR_RGB2HSV, cv2.COLOR_RGB2Lab)
RCNN_SIMILARITIES = (
    lambda: SEG.createSelectiveSearchSegmentationStrategyMultiple(
        SEG.createSelectiveSearchSegmentationStrategyColor(),
        SEG.createSelectiveSearchSegmentationStrategyTexture(),
        SEG.createSelectiveSearchSegmentationStrategySize(),
        SEG.createSelectiveSearchSegmentationStrategyFill(),
    ),
    lambda: SEG.createSelectiveSearchSegmentationStrategyMultiple(
        SEG.createSelectiveSearchSegmentationStrategyTexture(),
        SEG.createSelectiveSearchSegmentationStrategySize(),
        SEG.createSelectiveSearchSegmentationStrategyFill(),
    ),
)
NATIVE = ProposalConfig(method="ss-rcnn", ss_rcnn_width=0)  # no resize: the image as given


@pytest.fixture(scope="module")
def crowd() -> np.ndarray:
    """A 200 x 150 crowded image: many segments, so that every parameter changes the boxes."""
    return render_crowded(np.random.default_rng(4), 200, 150).rgb


def opencv_boxes(rgb: np.ndarray, colour: int, k: float, min_size: int, similarity) -> set:
    """The box set of one OpenCV Selective Search call, as inclusive (x1, y1, x2, y2)."""
    search = SEG.createSelectiveSearchSegmentation()
    search.addImage(cv2.cvtColor(rgb, colour))
    search.addGraphSegmentation(SEG.createGraphSegmentation(RCNN_SIGMA, k, min_size))
    search.addStrategy(similarity())
    return {(x, y, x + w - 1, y + h - 1) for x, y, w, h in search.process()}


def as_set(boxes: np.ndarray) -> set:
    return {tuple(int(v) for v in box) for box in boxes}


def narrowest_side(boxes: np.ndarray) -> int:
    return int(np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]).min()) + 1


def test_each_hierarchy_is_one_opencv_grouping_with_rcnns_parameters(crowd: np.ndarray) -> None:
    groups = rcnn_hierarchies(crowd, NATIVE)
    expected = [
        opencv_boxes(crowd, colour, k, k, similarity)
        for k in RCNN_KS
        for colour in RCNN_COLOURS
        for similarity in RCNN_SIMILARITIES
    ]
    assert [as_set(g) for g in groups] == expected
    # Each parameter changes the boxes on this image, so a wrong one would fail the check above.
    hsv, lab = RCNN_COLOURS
    colour_texture, texture_only = RCNN_SIMILARITIES
    assert expected[0] != opencv_boxes(crowd, hsv, 50, 100, colour_texture)  # min size = k
    assert expected[0] != opencv_boxes(crowd, hsv, 150, 150, colour_texture)  # k
    assert expected[0] != expected[1]  # the similarity sets
    assert expected[0] != expected[2]  # the colour spaces
    assert expected[0] != expected[4]  # the two ks


def test_the_working_image_is_resized_to_width_500() -> None:
    wide, narrow = np.zeros((300, 800, 3), np.uint8), np.zeros((150, 250, 3), np.uint8)
    assert resize_to_width(wide, 500, enlarge=False).shape == (188, 500, 3)  # 300 * 500 / 800
    assert resize_to_width(narrow, 500, enlarge=True).shape == (300, 500, 3)
    assert resize_to_width(narrow, 500, enlarge=False) is narrow
    assert resize_to_width(wide, 0, enlarge=True) is wide


def test_boxes_are_searched_at_the_working_width_and_mapped_back(crowd: np.ndarray) -> None:
    big = np.repeat(np.repeat(crowd, 2, axis=0), 2, axis=1)  # 400 x 300, exactly 2x
    cfg = dataclasses.replace(NATIVE, ss_rcnn_width=200, max_boxes=100_000)
    assert np.array_equal(resize_to_width(big, 200, enlarge=False), crowd)  # area averaging
    native = selective_search_rcnn(crowd, dataclasses.replace(cfg, ss_rcnn_width=0))
    boxes = selective_search_rcnn(big, cfg)
    halved = np.stack(
        [boxes[:, 0] / 2, boxes[:, 1] / 2, (boxes[:, 2] + 1) / 2 - 1, (boxes[:, 3] + 1) / 2 - 1], 1
    )
    np.testing.assert_array_equal(halved, native)  # the same boxes in the same order
    # min_side applies at the working width: nothing under 2 x min_side px on the 2x image ...
    assert narrowest_side(native) < 2 * cfg.min_side <= narrowest_side(boxes)
    # ... and on an enlarged image boxes narrower than min_side come back (R-CNN: 20 px at width
    # 500, 10 px on a 250 px wide image)
    small = cv2.resize(crowd, (100, 75), interpolation=cv2.INTER_AREA)
    enlarged = selective_search_rcnn(small, dataclasses.replace(cfg, ss_rcnn_enlarge=True))
    assert cfg.min_side // 2 - 1 <= narrowest_side(enlarged) < cfg.min_side  # - 1: rounding


def test_filtered_unique_clipped_and_cut_best_first(crowd: np.ndarray) -> None:
    boxes = selective_search_rcnn(crowd, NATIVE)
    everything = as_set(b for group in rcnn_hierarchies(crowd, NATIVE) for b in group)
    wide = {b for b in everything if min(b[2] - b[0], b[3] - b[1]) + 1 >= NATIVE.min_side}
    assert boxes.dtype == np.int32 and as_set(boxes) == wide and len(boxes) == len(wide)
    assert boxes[:, :2].min() >= 0 and boxes[:, 2].max() <= 199 and boxes[:, 3].max() <= 149
    cut = selective_search_rcnn(crowd, dataclasses.replace(NATIVE, max_boxes=7))
    np.testing.assert_array_equal(cut, boxes[:7])


def test_order_does_not_depend_on_c_rand(crowd: np.ndarray) -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.srand(1)
    first = selective_search_rcnn(crowd, NATIVE)
    libc.srand(987654)
    np.testing.assert_array_equal(selective_search_rcnn(crowd, NATIVE), first)


@pytest.mark.parametrize("name", ["released", "paper"])
def test_the_released_and_paper_presets_run_rcnns_settings(name: str) -> None:
    cfg = preset(name).proposals
    assert cfg.method == "ss-rcnn"
    assert (cfg.ss_rcnn_width, cfg.ss_rcnn_enlarge) == (500, False)  # as SPP_net's spp_detect.m
    assert (cfg.ss_rcnn_ks, cfg.ss_sigma) == (RCNN_KS, RCNN_SIGMA)
    assert cfg.min_side == 20  # minBoxWidth
