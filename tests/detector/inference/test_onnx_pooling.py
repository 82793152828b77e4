"""The ONNX model's pooling is sppdet's: MaxRoiPool's bins, the levels pooled bin by bin, the
window -> cell mapping, all checked against sppdet's own code through onnxruntime.

The bins are read off a "position map": channels x, -x, y, -y of each cell, so the max over a
bin is (last column, -first column, last row, -first row), the bin's exact extent."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torchvision
from onnx import TensorProto, helper

from sppdet.detector.inference.onnx_export import ONNX_OPSET, trace_to_onnx
from sppdet.detector.inference.onnx_graph import WindowSpp, maxroipool_mismatch
from sppdet.detector.spp.bins import level_bins, pyramid_dim
from sppdet.detector.spp.geometry import (
    RELEASED_EDGE_SHIFT,
    CellGeometry,
    boxes_to_cells,
    edge_shift,
)
from sppdet.detector.spp.pooler import WindowPooler

DEFAULT_LEVELS = (1, 2, 3, 6)
# Widths up to 1,100 cells: past the largest conv5 side any preset makes (max_size 2,000 px at
# stride 16: 126 cells) and past the widths where float32 bins first go wrong (57 at n = 7).
MAX_CELLS = 1100
SQUARE_CELLS = 130  # a conv5 map of the largest size a preset makes (2,000 px / 16 + 4)
UNIT = CellGeometry(stride=1, offset=0.0, receptive_field=1)  # with shift 0: a window is its cells
ZF5 = CellGeometry(stride=16, offset=20.0, receptive_field=139)


def session(proto: onnx.ModelProto | bytes) -> ort.InferenceSession:
    data = proto if isinstance(proto, bytes) else proto.SerializeToString()
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


def position_map(height: int, width: int) -> np.ndarray:
    """[1, 4, H, W] float32: x, -x, y, -y of every cell."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    return np.stack([x, -x, y, -y])[None]


def extents(pooled: np.ndarray) -> tuple[np.ndarray, ...]:
    """Bin starts and ends (exclusive), x then y, [R, n(y), n(x)] each, of a position map pooled
    to [R, 4, n, n]."""
    return -pooled[:, 1], pooled[:, 0] + 1, -pooled[:, 3], pooled[:, 2] + 1


def sppdet_extents(cells: np.ndarray, n: int) -> tuple[np.ndarray, ...]:
    """sppdet's bin extents of inclusive CELLS [R, 4], laid out as ``extents``'."""
    c = torch.as_tensor(cells, dtype=torch.int64)
    xs, xe = (v.numpy()[:, None, :].repeat(n, 1) for v in level_bins(c[:, 0], c[:, 2], n))
    ys, ye = (v.numpy()[:, :, None].repeat(n, 2) for v in level_bins(c[:, 1], c[:, 3], n))
    return xs, xe, ys, ye


def maxroipool(n: int, conv: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """onnxruntime's MaxRoiPool, n x n, spatial scale 1, on integer CELLS [R, 4] of CONV."""
    node = helper.make_node(
        "MaxRoiPool", ["x", "rois"], ["y"], pooled_shape=[n, n], spatial_scale=1.0
    )
    graph = helper.make_graph(
        [node],
        "roi",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, list(conv.shape)),
            helper.make_tensor_value_info("rois", TensorProto.FLOAT, [None, 5]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)])
    rois = np.concatenate([np.zeros((len(cells), 1)), cells], 1).astype(np.float32)
    return session(model).run(None, {"x": conv, "rois": rois})[0]


def edge_windows(height: int, width: int, sizes: Iterable[int]) -> np.ndarray:
    """Inclusive cells [R, 4] on a HEIGHT x WIDTH map: for each size s, windows min(s, W) wide and
    min(s, H) or H + 1 - s high, at the top-left corner, touching the bottom-right corner, and
    a few cells in."""
    rows = []
    for s in sizes:
        w = min(s, width)
        for h in {min(s, height), max(height + 1 - s, 1)}:
            x0, y0 = min(3, width - w), min(5, height - h)
            rows.append([0, 0, w - 1, h - 1])
            rows.append([width - w, height - h, width - 1, height - 1])
            rows.append([x0, y0, x0 + w - 1, y0 + h - 1])
    return np.array(rows, np.int64)


@pytest.mark.parametrize("n", DEFAULT_LEVELS)
def test_maxroipool_and_roi_pool_bins_are_sppdets(n: int) -> None:
    """Every width 1..1100 cells at the default levels, windows touching the map's edges: the
    bins of onnxruntime's MaxRoiPool and torchvision's roi_pool (what the exporter traces) are
    sppdet's, and so are the pooled vectors, layout included (``WindowPooler``). Columns are
    checked on a 1-row strip, rows on a 1-column strip (a bin's extent in one direction does
    not depend on the other), both directions at once on a 130-cell square map."""
    strip = [(1, MAX_CELLS), (MAX_CELLS, 1), (SQUARE_CELLS, SQUARE_CELLS)]
    for height, width in strip:
        conv = position_map(height, width)
        cells = edge_windows(height, width, range(1, max(height, width) + 1))
        expected = sppdet_extents(cells, n)
        from_ort = maxroipool(n, conv, cells)
        rois = torch.as_tensor(np.concatenate([0 * cells[:, :1], cells], 1), dtype=torch.float32)
        from_torchvision = torchvision.ops.roi_pool(torch.from_numpy(conv), rois, n, 1.0).numpy()
        for found in (from_ort, from_torchvision):
            for got, want in zip(extents(found), expected, strict=True):
                np.testing.assert_array_equal(got, want)
        pooled = WindowPooler().pool(torch.from_numpy(conv[0]), cells, (n,))
        np.testing.assert_array_equal(from_ort.reshape(len(cells), -1), pooled.numpy())
    assert maxroipool_mismatch(n) is None  # nor any width up to 65,536 cells (emulated)


def test_the_exporters_check_finds_where_onnxruntimes_bins_go_wrong() -> None:
    """``maxroipool_mismatch`` (numpy's float32 emulation, which decides how a level is
    exported) names the first width at which onnxruntime's bins differ, for levels 1-13: none
    for most, 57 cells at n = 7, 29 at n = 11, 7 at n = 13 (e.g. 7 * float32(7/13) rounds up)."""
    widths = 300
    conv = position_map(1, widths)
    cells = np.array([[0, 0, w - 1, 0] for w in range(1, widths + 1)], np.int64)
    first = {}
    for n in range(1, 14):
        got = extents(maxroipool(n, conv, cells))
        want = sppdet_extents(cells, n)
        right = [(g == w).all((1, 2)) for g, w in zip(got, want, strict=True)]
        wrong = np.nonzero(~np.all(right, 0))[0]
        first[n] = int(wrong[0]) + 1 if len(wrong) else None
        assert maxroipool_mismatch(n, widths) == first[n], n
    assert {n: w for n, w in first.items() if w is not None} == {7: 57, 11: 29, 13: 7}


def spp_session(
    geometry: CellGeometry, shift: float, pyramid: tuple[int, ...], channels: int
) -> tuple[WindowSpp, ort.InferenceSession]:
    """``WindowSpp`` exported as the model's is (``trace_to_onnx``), dynamic map size and N."""
    spp = WindowSpp(geometry, shift, pyramid, channels).eval()
    conv = torch.rand(1, channels, 9, 11)
    windows = torch.tensor([[0.0, 0.0, 40.0, 30.0], [5.0, 6.0, 7.0, 8.0]])
    axes = {"conv5": {2: "height", 3: "width"}, "windows": {0: "windows"}}
    data = trace_to_onnx(spp, (conv, windows), ["conv5", "windows"], ["pooled"], axes)
    return spp, session(data)


def test_exported_spp_pools_exactly_as_sppdet_levels_bin_by_bin_included() -> None:
    """The exported pooling, levels 7 and 13 (pooled bin by bin) among the default ones, equals
    ``WindowPooler`` bit for bit: on the position map for widths 1-64 cells (7 and 57 among
    them, where MaxRoiPool's own 13 x 13 and 7 x 7 bins go wrong), 100 and 160, and on a random
    map with negative values, windows touching every edge."""
    pyramid = (1, 2, 3, 6, 7, 13)
    size = 160
    spp, run = spp_session(UNIT, 0.0, pyramid, 4)
    assert spp.per_bin == (7, 13)
    assert (
        spp.pooling()["13"] == "MaxRoiPool 1x1 per bin" and spp.pooling()["6"] == "MaxRoiPool 6x6"
    )
    cells = edge_windows(size, size, [*range(1, 65), 100, size])
    conv = position_map(size, size)
    pooled = run.run(None, {"conv5": conv, "windows": cells.astype(np.float32)})[0]
    expected = WindowPooler().pool(torch.from_numpy(conv[0]), cells, pyramid).numpy()
    np.testing.assert_array_equal(pooled, expected)
    assert pooled.shape == (len(cells), pyramid_dim(pyramid, 4))

    rng = np.random.default_rng(3)
    noise = rng.standard_normal((1, 4, 23, 37)).astype(np.float32)
    x1, y1 = rng.integers(0, 37, 500), rng.integers(0, 23, 500)
    x2, y2 = rng.integers(x1, 37), rng.integers(y1, 23)
    cells = np.stack([x1, y1, x2, y2], 1)
    pooled = run.run(None, {"conv5": noise, "windows": cells.astype(np.float32)})[0]
    expected = WindowPooler().pool(torch.from_numpy(noise[0]), cells, pyramid).numpy()
    np.testing.assert_array_equal(pooled, expected)


@pytest.mark.parametrize("rule", ["released", "paper"])
def test_exported_window_mapping_gives_boxes_to_cells(rule: str) -> None:
    """Windows in pixels -> cells inside the ONNX graph (float64 Floor/Ceil/Where/Min/Max) equal
    ``boxes_to_cells`` with factor 1: edges exactly on a rounding boundary, windows so narrow
    that left > right (the midpoint rule, with a positive or negative sum), windows past
    the map, fractional coordinates as ``onnx_inputs`` makes them. The cells are read back as
    the extent of a 1 x 1 level on the position map."""
    shift = edge_shift(rule, ZF5)
    assert rule == "paper" or shift == RELEASED_EDGE_SHIFT
    _, run = spp_session(ZF5, shift, (1,), 4)
    height, width = 30, 41
    rng = np.random.default_rng(5)
    k = np.arange(-2, 45)
    # left = floor((x + 1 - 21 + shift) / 16 + 1/2) and right = ceil((x + 1 - 21 - shift) / 16
    # - 1/2) are integers before rounding at these x: edges on them and one float32 step off
    left_ties, right_ties = 16 * k + 12 - shift, 16 * k + 28 + shift
    ties = np.concatenate([left_ties, right_ties - 3]).astype(np.float32)
    near = np.concatenate([ties, np.nextafter(ties, -np.inf), np.nextafter(ties, np.inf)])
    lefts = np.concatenate([near, rng.uniform(-30, 700, 400)])
    narrow = np.tile(np.concatenate([rng.uniform(0, 13, len(k)), [3.0] * len(k)]), 3)
    widths = np.concatenate([narrow, rng.uniform(0, 300, 400)])
    tops = rng.uniform(-20, 500, len(lefts))
    windows = np.stack([lefts, tops, lefts + widths, tops + rng.uniform(0, 200, len(lefts))], 1)
    windows = np.concatenate([windows, windows[:, [1, 0, 3, 2]], [[-50, -50, 900, 900]]])
    windows = windows.astype(np.float32)
    pooled = run.run(None, {"conv5": position_map(height, width), "windows": windows})[0]
    got = np.stack([-pooled[:, 1], -pooled[:, 3], pooled[:, 0], pooled[:, 2]], 1).reshape(-1, 4)
    expected = boxes_to_cells(windows.astype(np.float64), 1.0, ZF5, height, width, shift)
    np.testing.assert_array_equal(got, expected)
    x = windows.astype(np.float64) + 1
    lo = np.floor((x[:, 0] - 21 + shift) / 16 + 0.5)
    hi = np.ceil((x[:, 2] - 21 - shift) / 16 - 0.5)
    assert (lo > hi).sum() > 20 and ((lo > hi) & (lo + hi + 2 < 0)).any()  # both kinds there
