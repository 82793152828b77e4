"""Tests of ``sppdet.detector.spp.geometry``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from sppdet.detector.backbones.registry import backbone_names, backbone_spec
from sppdet.detector.backbones.trunk import build_trunk
from sppdet.detector.spp.geometry import (
    CellGeometry,
    boxes_to_cells,
    edge_shift,
    scale_factor,
)

ZF5 = CellGeometry(16, 20.0, 139)


def _linearised(features: nn.Sequential) -> nn.Sequential:
    """Same layer geometry, 1 channel, all-ones weights, average instead of max pooling: the
    gradient of an output cell w.r.t. the input is non-zero exactly on its receptive field."""
    layers: list[nn.Module] = []
    for layer in features:
        if isinstance(layer, nn.Conv2d):
            conv = nn.Conv2d(1, 1, layer.kernel_size, layer.stride, layer.padding, bias=False)
            nn.init.ones_(conv.weight)
            layers.append(conv)
        elif isinstance(layer, nn.MaxPool2d):
            layers.append(
                nn.AvgPool2d(layer.kernel_size, layer.stride, layer.padding, layer.ceil_mode)
            )
    return nn.Sequential(*layers)


@pytest.mark.parametrize(
    "arch, expected, size",
    [
        ("zf5", (16, 20.0, 139), 300),
        ("alexnet", (16, 15.0, 163), 300),
        ("vgg16", (16, 7.5, 196), 260),
    ],
)
def test_declared_geometry_matches_the_receptive_fields_of_the_real_layers(arch, expected, size):
    trunk = build_trunk(arch)
    geometry = backbone_spec(arch).geometry
    assert (geometry.stride, geometry.offset, geometry.receptive_field) == expected
    net = _linearised(trunk.features).double()
    x = torch.ones(1, 1, size, size, dtype=torch.float64, requires_grad=True)
    out = net(x)
    j = out.shape[-1] // 2  # an interior cell: its field is not clipped by the image border
    out[0, 0, j, j].backward()
    support = np.nonzero(x.grad[0, 0].sum(0).numpy())[0]  # columns the cell sees
    assert support[-1] - support[0] + 1 == geometry.receptive_field
    assert (support[0] + support[-1]) / 2 == geometry.stride * j + geometry.offset


def test_mapping_reproduces_the_released_zf5_formulas():
    rng = np.random.default_rng(1)
    height, width = 375, 500
    boxes = np.sort(rng.uniform(0, 499, (3000, 2)), 1)
    boxes = np.stack([boxes[:, 0], boxes[:, 0] * 0.7, boxes[:, 1], boxes[:, 1] * 0.7], 1)
    boxes[:40, 2] = boxes[:40, 0] + rng.uniform(0, 12, 40)  # narrow: degenerate cases
    for scale in (480, 688, 1200):
        map_h, map_w = 30 + scale // 40, 40 + scale // 30
        got = boxes_to_cells(
            boxes,
            scale_factor(scale, min(height, width)),
            ZF5,
            map_h,
            map_w,
            edge_shift("released", ZF5),
        )
        # Released code, 1-based: b_s = (b-1)(s-1)/(min(H,W)-1)+1, then the two formulas.
        one_based = boxes + 1
        b = (one_based - 1) * (scale - 1) / (min(height, width) - 1) + 1
        left = np.floor((b[:, :2] - 6.5) / 16) + 1
        right = np.ceil((b[:, 2:] - 35.5) / 16) + 1
        bad = left > right
        mid = np.floor((left + right) / 2)
        left, right = np.where(bad, mid, left), np.where(bad, mid, right)
        top = np.array([map_w, map_h])
        want = np.concatenate([np.clip(left, 1, top), np.clip(right, 1, top)], 1) - 1
        assert np.array_equal(got, want.astype(np.int64))
        assert bad.any()


def test_paper_rule_is_the_appendix_formula():
    rng = np.random.default_rng(2)
    x = rng.uniform(0, 900, (500, 4))
    geometry = CellGeometry(16, 0.0, 1)  # the appendix's idealised padding: centres at 16 x'
    cells = boxes_to_cells(x, 1.0, geometry, 10_000, 10_000, edge_shift("paper", geometry))
    left = np.floor(x[:, :2] / 16) + 1
    right = np.ceil(x[:, 2:] / 16) - 1
    ok = (left <= right).all(1)
    assert np.array_equal(cells[ok, :2], left[ok]) and np.array_equal(cells[ok, 2:], right[ok])


@pytest.mark.parametrize("arch", backbone_names())
def test_window_centre_lands_on_the_nearest_cell(arch):
    geometry = backbone_spec(arch).geometry
    rng = np.random.default_rng(3)
    x1 = rng.uniform(300, 700, 4000)
    w = np.exp(rng.uniform(0, 6, 4000))
    boxes = np.stack([x1, x1, x1 + w, x1 + w], 1)
    cells = boxes_to_cells(boxes, 1.0, geometry, 1000, 1000, edge_shift("released", geometry))
    centre = (boxes[:, 0] + boxes[:, 2]) / 2
    nearest_dist = np.abs(
        geometry.centre(np.round((centre - geometry.offset) / geometry.stride)) - centre
    )
    lo, hi = cells[:, 0], cells[:, 2]
    middle = [np.floor((lo + hi) / 2), np.ceil((lo + hi) / 2)]
    dist = np.minimum(*[np.abs(geometry.centre(m) - centre) for m in middle])
    # The middle cell(s) of the mapped span hold the receptive-field centre nearest to the
    # window centre; a window too narrow to contain a centre (released rule) takes the left
    # one of the two cells around it, so the nearest is that cell or its right neighbour.
    wide = w > 2 * 6.5 + geometry.stride  # certainly not degenerate
    assert np.allclose(dist[wide], nearest_dist[wide])
    narrow_next = np.abs(geometry.centre(lo + 1) - centre)
    assert np.all(np.isclose(np.minimum(dist, narrow_next), nearest_dist))
    assert (lo <= hi).all()


def test_tiny_degenerate_and_border_windows_map_inside_the_map():
    height, width = 37, 53
    map_h, map_w = 2, 3
    boxes = np.array(
        [
            [0, 0, 0, 0],
            [52, 36, 52, 36],
            [0, 0, 52, 36],
            [51, 0, 52, 1],
            [26, 18, 26, 18],
            [-5, -5, 60, 60],  # a box beyond the image (a sloppy proposal) still maps inside
        ],
        float,
    )
    assert boxes[:5, 2].max() == width - 1 and boxes[:5, 3].max() == height - 1
    for scale in (37, 100, 900):
        factor = scale_factor(scale, min(height, width))
        cells = boxes_to_cells(boxes, factor, ZF5, map_h, map_w)
        assert (cells[:, [0, 2]] >= 0).all() and (cells[:, [0, 2]] < map_w).all()
        assert (cells[:, [1, 3]] >= 0).all() and (cells[:, [1, 3]] < map_h).all()
        assert (cells[:, 2] >= cells[:, 0]).all() and (cells[:, 3] >= cells[:, 1]).all()
    full = boxes_to_cells(boxes[2:3], 1.0, ZF5, map_h, map_w)
    assert full.tolist() == [[0, 0, 2, 1]]


def test_mapping_takes_one_map_size_per_window():
    boxes = np.array([[0, 0, 999, 999], [0, 0, 999, 999]], float)
    cells = boxes_to_cells(boxes, np.array([1.0, 0.5]), ZF5, np.array([60, 30]), np.array([62, 31]))
    assert cells.tolist() == [[0, 0, 61, 59], [0, 0, 30, 29]]


def _released_mex_cells(box: list[float], scale: int, min_side: int, map_w: int, map_h: int):
    """A literal transcription of the released code for one 1-based box: the scaling of
    spp_features_convX_to_poolX.m, then the box normalisation of spm_pool_caffe_mex.cpp
    (ZF-5: offset0 = 21, offset = 6.5, min_times = 16), returning its 1-based cells l t r b."""
    # scaled_boxes = bsxfun(@times, (boxes - 1), (boxes_scales(:) - 1)) / (min_img_sz - 1) + 1;
    x0, y0, x1, y1 = ((b - 1) * (scale - 1) / (min_side - 1) + 1 for b in box)
    offset0, offset, min_times = 21.0, 6.5, 16.0
    x0_norm = int(math.floor((x0 - offset0 + offset) / min_times + 0.5) + 1)
    y0_norm = int(math.floor((y0 - offset0 + offset) / min_times + 0.5) + 1)
    x1_norm = int(math.ceil((x1 - offset0 - offset) / min_times - 0.5) + 1)
    y1_norm = int(math.ceil((y1 - offset0 - offset) / min_times - 0.5) + 1)
    if x0_norm > x1_norm:
        x0_norm = int((x0_norm + x1_norm) / 2)  # C int division: truncation toward zero
        x1_norm = x0_norm
    if y0_norm > y1_norm:
        y0_norm = int((y0_norm + y1_norm) / 2)
        y1_norm = y0_norm
    top = min(map_h, max(1, y0_norm))
    bottom = min(map_h, max(1, y1_norm))
    left = min(map_w, max(1, x0_norm))
    right = min(map_w, max(1, x1_norm))
    return [left, top, right, bottom]


# (min(H, W), scale) pairs where integer boxes land exactly on a cell boundary once scaled.
BOUNDARY_CASES = ((217, 874), (277, 688), (313, 688), (325, 874), (433, 874), (463, 688))


@pytest.mark.parametrize("min_side, scale", BOUNDARY_CASES)
def test_integer_boxes_on_cell_boundaries_map_as_the_released_mex(min_side, scale):
    map_w = map_h = scale // 16 + 1
    x = np.arange(min_side, dtype=np.float64)
    widths = (0.0, 3.0, 17.0, 40.0, 101.0)  # degenerate (narrow) to wide windows
    boxes = np.concatenate(
        [np.stack([x, x[::-1] / 2, np.minimum(x + w, min_side - 1), x[::-1]], 1) for w in widths]
    )
    got = boxes_to_cells(boxes, scale_factor(scale, min_side), ZF5, map_h, map_w)
    want = [_released_mex_cells((b + 1).tolist(), scale, min_side, map_w, map_h) for b in boxes]
    np.testing.assert_array_equal(got, np.array(want) - 1)
    # The case is what it claims: some scaled edge is exactly on a cell boundary, i.e. the
    # mex's floor/ceil argument is an integer.
    scaled = boxes * (scale - 1) / (min_side - 1) + 1
    left, right = (scaled[:, 0] - 14.5) / 16 + 0.5, (scaled[:, 2] - 27.5) / 16 - 0.5
    assert (left == np.floor(left)).any() or (right == np.ceil(right)).any()
