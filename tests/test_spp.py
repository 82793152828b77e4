"""Window -> cell mapping, window SPP (tables and roi_pool), whole-image SPP, best-scale rules."""

from __future__ import annotations

import math
import shutil
import sysconfig

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from sppdet.detector import spp_native
from sppdet.detector.nets import build_trunk
from sppdet.detector.spp import (
    CellGeometry,
    WindowPooler,
    _flip_negative_,
    _table_level,
    _table_order,
    _to_ordered_,
    advise_huge_pages,
    best_scale,
    best_scale_area,
    best_scale_released,
    boxes_to_cells,
    edge_shift,
    image_spp,
    layer_geometry,
    module_layers,
    pyramid_dim,
    scale_factor,
    sliding_agrees,
    sliding_bins,
    window_spp,
    window_spp_roi_pool,
)

ZF5 = CellGeometry(16, 20.0, 139)
NOT_BUILT = "the compiled pooler is not built (installed without a C compiler)"
# Every pooler test runs on both CPU paths: the torch tables and the compiled kernel.
KERNELS = [
    "torch",
    pytest.param("native", marks=pytest.mark.skipif(not spp_native.built(), reason=NOT_BUILT)),
]


def reference_spp(conv: np.ndarray, cells: np.ndarray, pyramid) -> np.ndarray:
    """Direct transcription of SPEC.md: loops over windows, levels and bins."""
    rows = []
    for x1, y1, x2, y2 in cells:
        h, w = y2 - y1 + 1, x2 - x1 + 1
        parts = []
        for n in pyramid:
            level = np.empty((conv.shape[0], n, n), conv.dtype)
            for i in range(n):
                ys, ye = y1 + (i * h) // n, y1 + math.ceil((i + 1) * h / n)
                for j in range(n):
                    xs, xe = x1 + (j * w) // n, x1 + math.ceil((j + 1) * w / n)
                    level[:, i, j] = conv[:, ys:ye, xs:xe].max(axis=(1, 2))
            parts.append(level.reshape(-1))  # channel-major: c*n*n + y*n + x
        rows.append(np.concatenate(parts))
    return np.stack(rows)


def random_cells(rng: np.random.Generator, n: int, height: int, width: int) -> np.ndarray:
    x = np.sort(rng.integers(0, width, (n, 2)), 1)
    y = np.sort(rng.integers(0, height, (n, 2)), 1)
    return np.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], 1)


# ------------------------------------------------------------------------------ geometry


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
def test_geometry_matches_the_receptive_fields_of_the_real_layers(arch, expected, size):
    trunk = build_trunk(arch)
    geometry = layer_geometry(module_layers(trunk.features))
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


@pytest.mark.parametrize("geometry", [ZF5, CellGeometry(16, 15.0, 163), CellGeometry(16, 7.5, 196)])
def test_window_centre_lands_on_the_nearest_cell(geometry):
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


# ------------------------------------------------------------------------------- window SPP


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("pyramid", [(1, 2, 3, 6), (6,), (7,), (1, 2, 4), (5, 3, 1)])
def test_window_spp_equals_the_direct_reference(pyramid, kernel):
    rng = np.random.default_rng(4)
    for height, width in ((1, 1), (5, 3), (13, 13), (23, 40)):
        conv = rng.standard_normal((5, height, width)).astype(np.float32)
        cells = random_cells(rng, 60, height, width)
        want = reference_spp(conv, cells, pyramid)
        got = WindowPooler(kernel=kernel).pool(torch.from_numpy(conv), cells, pyramid)
        assert got.shape == (60, pyramid_dim(pyramid, 5))
        assert np.array_equal(got.numpy(), want)
        assert np.array_equal(window_spp_roi_pool(torch.from_numpy(conv), cells, pyramid), want)


@pytest.mark.parametrize("kernel", KERNELS)
def test_pooler_mixes_maps_in_one_call_across_chunks(kernel):
    rng = np.random.default_rng(5)
    maps = [
        rng.standard_normal((4, h, w)).astype(np.float16) for h, w in ((70, 90), (9, 5), (30, 31))
    ]
    which = rng.integers(0, 3, 300)
    cells = np.zeros((300, 4), np.int64)
    want = np.zeros((300, 4 * 50), np.float16)
    for k, conv in enumerate(maps):
        rows = which == k
        cells[rows] = random_cells(rng, int(rows.sum()), *conv.shape[1:])  # bins up to 15 wide
        want[rows] = reference_spp(conv, cells[rows], (1, 2, 3, 6))
    pooler = WindowPooler(chunk=32, kernel=kernel)
    out = torch.full((400, want.shape[1]), -7.0)
    got = pooler.pool([torch.from_numpy(m) for m in maps], cells, map_index=which, out=out)
    assert got.data_ptr() == out.data_ptr() and got.shape == (300, 200)
    assert np.array_equal(out[:300].numpy(), want.astype(np.float32))  # float16 max is exact
    assert (out[300:] == -7.0).all()
    again = pooler.pool(torch.from_numpy(maps[1]), cells[which == 1])  # reused buffers
    assert again.dtype == torch.float16 and np.array_equal(again.numpy(), want[which == 1])
    with pytest.raises(ValueError, match="map_index"):
        pooler.pool([torch.from_numpy(m) for m in maps], cells, map_index=which + 1)


def _bin_extents(pool, n: int, width: int = 160) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(window lengths, first and last column of every bin) as POOL computes them, read off a map
    whose channel 0 rises along x and channel 1 falls: a bin's max there is its last / first
    column, so the pooled values reveal each bin's exact extent."""
    xs = torch.arange(width, dtype=torch.float32)
    conv = torch.stack([xs, -xs]).view(2, 1, width).expand(2, 3, width).contiguous()
    lengths = np.arange(1, width - 2)
    cells = np.stack([np.ones_like(lengths), 0 * lengths, lengths, 0 * lengths + 2], 1)
    bins = pool(conv, cells, (n,)).view(len(lengths), 2, n, n)
    return lengths, -bins[:, 1, 0].numpy(), bins[:, 0, 0].numpy()


def _appendix_extents(lengths: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    i, span = np.arange(n), lengths[:, None]
    return 1 + (i * span) // n, 1 + -((-(i + 1) * span) // n) - 1


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 7, 11, 13])
def test_pooler_bins_are_the_appendix_bins_exhaustively(n, kernel):
    lengths, first, last = _bin_extents(WindowPooler(kernel=kernel).pool, n)
    want_first, want_last = _appendix_extents(lengths, n)
    assert np.array_equal(first, want_first) and np.array_equal(last, want_last)


def test_roi_pool_bins_match_for_the_default_levels_but_not_for_seven():
    for n in (1, 2, 3, 6):
        lengths, first, last = _bin_extents(window_spp_roi_pool, n)
        want_first, want_last = _appendix_extents(lengths, n)
        assert np.array_equal(first, want_first) and np.array_equal(last, want_last)
    # float32(57/7) * 7 rounds above 57: roi_pool's last bin takes a cell beyond the window.
    # This is why WindowPooler does not use roi_pool (see window_spp_roi_pool's docstring).
    lengths, first, last = _bin_extents(window_spp_roi_pool, 7)
    _, want_last = _appendix_extents(lengths, 7)
    assert last[lengths == 57, 6] == want_last[lengths == 57, 6] + 1


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_ordered_keys_sort_like_the_floats_and_map_back(dtype):
    """The pooler takes maxima on integers: float bits with the magnitude of negative numbers
    inverted. Their order must be the floats' order, and the same flip must restore the bits."""
    if dtype == torch.float32:
        rng = np.random.default_rng(10)
        special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 1e-45, -1e-45], np.float32)
        bits = np.concatenate([rng.integers(-(2**31), 2**31, 200_000), special.view(np.int32)])
        bits = torch.from_numpy(bits.astype(np.int32))
    else:  # every 16-bit pattern
        bits = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16)
    values = bits.view(dtype).double()
    number = ~torch.isnan(values)
    keys = bits.clone()
    _to_ordered_(keys, dtype)
    order = torch.argsort(keys[number], stable=True)
    assert torch.all(values[number][order].diff() >= 0)  # integer order is float order
    assert values[number][order[0]] == -math.inf and values[number][order[-1]] == math.inf
    assert (keys[~number] > keys[number].max()).all()  # every NaN sorts above +inf
    back = keys.clone()
    _flip_negative_(back)
    assert torch.equal(back[number], bits[number])  # numbers map back bit for bit
    assert torch.isnan(back[~number].view(dtype)).all()


@pytest.mark.parametrize("kernel", KERNELS)
def test_pooler_is_exact_on_signed_zero_infinite_and_nan_maps(kernel):
    rng = np.random.default_rng(11)
    conv = rng.standard_normal((6, 17, 21)).astype(np.float32)
    conv[0] = -np.abs(conv[0])  # a channel of negatives only
    conv[1] = -0.0
    conv[2, 3:9, 4:15] = np.inf
    conv[3, 5, 5] = -np.inf
    conv[4, 8, 8] = np.nan  # positive NaN
    conv[5, 2, 3] = -np.float32(np.nan)  # NaN with the sign bit set (what 0 * inf gives)
    cells = random_cells(rng, 200, 17, 21)
    want = reference_spp(conv, cells, (1, 2, 3, 6))
    for dtype in (torch.float32, torch.float16):
        maps = torch.from_numpy(conv).to(dtype)
        expect = reference_spp(maps.float().numpy(), cells, (1, 2, 3, 6))
        pooler = WindowPooler(chunk=16, kernel=kernel)
        got = pooler.pool(maps, cells, out=torch.empty(200, expect.shape[1]))
        assert np.array_equal(got.numpy(), expect, equal_nan=True)
    assert np.isnan(want).any() and np.isposinf(want).any() and (want < 0).any()


@pytest.mark.parametrize("kernel", ["torch", "auto"])  # auto: native where it applies
def test_pooler_keeps_map_dtype_or_converts_exactly_to_the_output_dtype(kernel):
    rng = np.random.default_rng(12)
    conv = np.maximum(rng.standard_normal((8, 30, 40)), 0).astype(np.float16)  # ReLU output
    cells = random_cells(rng, 100, 30, 40)
    want = reference_spp(conv, cells, (1, 2, 3, 6))
    pooler = WindowPooler(chunk=7, kernel=kernel)  # torch: chunks that do not divide N
    same = pooler.pool(torch.from_numpy(conv), cells)
    assert same.dtype == torch.float16 and np.array_equal(same.numpy(), want)
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        got = pooler.pool(torch.from_numpy(conv), cells, out=torch.empty(100, 8 * 50, dtype=dtype))
        assert got.dtype == dtype
        assert torch.equal(got, torch.from_numpy(want).to(dtype))
    doubles = torch.from_numpy(conv).double() - 0.5  # float64 maps, signed
    got = pooler.pool(doubles, cells, out=torch.empty(100, 8 * 50))
    assert np.array_equal(got.numpy(), reference_spp(doubles.numpy(), cells, (1, 2, 3, 6)))


def test_table_level_is_the_smallest_that_covers_a_run_with_two_lookups():
    length = torch.arange(1, 5000)
    k = _table_level(length)
    assert torch.all(2**k <= length) and torch.all(length <= 2 ** (k + 1))
    assert torch.all((k == 0) | (2**k < length))  # k - 1 would leave a gap between lookups
    assert k[:9].tolist() == [0, 0, 1, 1, 2, 2, 2, 2, 3]  # lengths 1..9


def test_table_order_builds_the_needed_tables_from_built_sources():
    needed = [(1, 1), (1, 3), (2, 3), (3, 0), (0, 2)]
    order = _table_order(needed)
    built = [pair for pair, _ in order]
    assert order[0] == ((0, 0), None) and len(set(built)) == len(built)
    assert set(needed) <= set(built)
    for i, (pair, source) in enumerate(order[1:], 1):
        assert source in built[:i]  # built before it
        assert (pair[0] - source[0], pair[1] - source[1]) in ((1, 0), (0, 1))
    # Not the 16 tables of the full grid up to (3, 3): the needed ones and the shortest paths
    # to them ((1, 3) continues from (0, 2) through (1, 2); (3, 0) goes up from (0, 0)).
    assert set(built) == set(needed) | {(0, 0), (0, 1), (1, 2), (1, 0), (2, 0)}
    assert _table_order([]) == [((0, 0), None)]


@pytest.mark.parametrize("kernel", KERNELS)
def test_results_reuse_memory_only_when_nothing_references_it(kernel):
    rng = np.random.default_rng(13)
    conv = torch.from_numpy(rng.standard_normal((4, 9, 11)).astype(np.float32))
    cells = random_cells(rng, 40, 9, 11)
    want = torch.from_numpy(reference_spp(conv.numpy(), cells, (1, 2, 3, 6)))
    pooler = WindowPooler(keep_results=2, kernel=kernel)
    first = pooler.pool(conv, cells)
    address = first.data_ptr()
    held = {
        "tensor": lambda x: x,
        "view": lambda x: x[3:5],
        "numpy array": lambda x: x.numpy(),
        "storage": lambda x: x.untyped_storage(),
        "dlpack capsule": lambda x: x.__dlpack__(),
    }
    for how, hold in held.items():
        keep = hold(first)
        del first
        second = pooler.pool(conv, cells)
        assert second.data_ptr() != address, how  # still referenced: new memory
        assert torch.equal(second, want)
        del keep, second  # only the pooler holds them now
        first = pooler.pool(conv, cells)
        assert first.data_ptr() == address, how  # dropped: reused
        assert torch.equal(first, want)
    del first
    smaller = pooler.pool(conv, cells[:7])  # a result that fits in a kept buffer reuses it
    assert smaller.data_ptr() == address and torch.equal(smaller, want[:7])
    never = WindowPooler(keep_results=0)
    assert torch.equal(never.pool(conv, cells), want) and never._results == []
    assert len(pooler._results) == 2
    assert never.new_result(0, 5, torch.float32).shape == (0, 5)


def test_advise_huge_pages_changes_no_values():
    tensor = torch.arange(3 << 20, dtype=torch.float32)  # 12 MiB: several whole 2 MiB pages
    advise_huge_pages(tensor)
    advise_huge_pages(tensor[::2])  # not contiguous: no advice, no error
    advise_huge_pages(torch.zeros(3))  # smaller than a page: nothing to advise
    assert torch.equal(tensor, torch.arange(3 << 20, dtype=torch.float32))
    fresh = torch.empty(5 << 20, dtype=torch.float16)
    advise_huge_pages(fresh)
    fresh.fill_(2.5)
    assert bool((fresh == 2.5).all())


def test_the_compiled_pooler_is_built_where_a_c_compiler_is():
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        pytest.skip(f"no C compiler ({compiler}) here: pooling goes through torch")
    assert spp_native.built(), "pip found a C compiler but did not build _spp_kernel (see setup.py)"


def test_an_install_without_the_kernel_pools_through_torch_and_says_so(monkeypatch):
    monkeypatch.setattr(spp_native, "_spp_kernel", None)
    conv = torch.rand(3, 7, 9)
    cells = np.array([[0, 0, 8, 6], [2, 3, 4, 4]])
    pooler = WindowPooler()
    with pytest.warns(RuntimeWarning, match="not built, so pooling runs through torch"):
        got = pooler.pool(conv, cells)
    assert pooler.last_path == "torch"
    assert np.array_equal(got.numpy(), reference_spp(conv.numpy(), cells, (1, 2, 3, 6)))
    with pytest.raises(ValueError, match="not built; reinstall"):
        WindowPooler(kernel="native")


def test_window_spp_rejects_cells_outside_the_map():
    conv = torch.zeros(2, 4, 4)
    with pytest.raises(ValueError, match=r"\[0, 0, 4, 3\] are not inside the 4x4 map"):
        window_spp(conv, np.array([[0, 0, 4, 3]]))
    with pytest.raises(ValueError, match="inside"):
        window_spp(conv, np.array([[2, 0, 1, 3]]))
    with pytest.raises(ValueError, match="one dtype"):
        WindowPooler().pool([conv, conv.half()], np.array([[0, 0, 1, 1]]))


# --------------------------------------------------------------------------- whole-image SPP


def test_image_spp_equals_window_spp_over_the_full_map():
    rng = np.random.default_rng(6)
    for height, width in ((13, 13), (10, 17), (2, 9), (1, 1)):
        maps = torch.from_numpy(rng.standard_normal((3, 4, height, width)).astype(np.float32))
        whole = image_spp(maps)
        full = np.array([[0, 0, width - 1, height - 1]])
        for b in range(3):
            assert np.array_equal(whole[b].numpy(), window_spp(maps[b], full)[0].numpy())


def test_sliding_form_agrees_only_where_documented():
    rng = np.random.default_rng(7)
    maps = torch.from_numpy(rng.standard_normal((1, 3, 13, 13)).astype(np.float32))
    assert torch.equal(image_spp(maps, form="sliding"), image_spp(maps))  # the paper's 224 input
    assert sliding_bins(10, 6) == 9 and not sliding_agrees(10, 6)
    assert sliding_bins(11, 3) == 3 and not sliding_agrees(11, 3)  # [0,4) [3,7) [6,10): misses 10
    with pytest.raises(ValueError, match="bins"):
        image_spp(torch.zeros(1, 1, 10, 10), (6,), form="sliding")
    # sliding_agrees against the pooling layers themselves, on a map where every value differs.
    for a in range(1, 41):
        conv = torch.from_numpy(rng.permutation(a * a).astype(np.float32)).view(1, 1, a, a)
        for n in (1, 2, 3, 6):
            if a < n:
                assert not sliding_agrees(a, n)
                continue
            slid = nn.functional.max_pool2d(conv, math.ceil(a / n), a // n)
            same = slid.shape[-1] == n and torch.equal(
                slid, nn.functional.adaptive_max_pool2d(conv, n)
            )
            assert sliding_agrees(a, n) == same, (a, n)


def test_single_level_pyramids_reproduce_torchvision_pool5():
    # AlexNet: conv5 of a 224 input is 13x13 and pool5 is max 3x3 stride 2 -> 6x6; VGG-16: conv5_3
    # is 14x14 and pool5 is max 2x2 stride 2 -> 7x7. SPP {6} / {7} over the whole map gives the
    # same 6x6 / 7x7 maxima, channel-major as torch.flatten, so the pretrained fc6 applies as is.
    rng = np.random.default_rng(8)
    alex_pool5 = torchvision.models.alexnet().features[12]
    vgg_pool5 = torchvision.models.vgg16().features[30]
    for pool5, channels, side, level in ((alex_pool5, 256, 13, 6), (vgg_pool5, 512, 14, 7)):
        conv = torch.from_numpy(rng.standard_normal((channels, side, side)).astype(np.float32))
        want = torch.flatten(pool5(conv[None]), 1)[0]
        got = window_spp(conv, np.array([[0, 0, side - 1, side - 1]]), (level,))[0]
        assert torch.equal(got, want)


# ------------------------------------------------------------------------------ best scale

SCALES = (480, 576, 688, 874, 1200)


def test_released_rule_on_hand_computed_boxes():
    boxes = np.array([[0, 0, 99, 99], [10, 10, 109, 109], [0, 0, 499, 374]], float)
    # 100x100 in a 375-short image: expected round(208*375/100) = 780 -> 688 (92 away, 874 is 94).
    # Whole 500x375 image: 208*375/sqrt(187500) = 180.1 -> 180 -> 480.
    assert best_scale_released(boxes, 375, SCALES).tolist() == [2, 2, 0]
    # Tie: a 208x208 box with min side 632 expects 632, halfway between 576 and 688 -> 576.
    assert best_scale_released(np.array([[0, 0, 207, 207]]), 632, SCALES).tolist() == [1]
    # Rounding is half up: 208*373/416 = 186.5 -> 187 (numpy's half-to-even would give 186),
    # so with scales (185, 188) the rule picks 188.
    assert best_scale_released(np.array([[0, 0, 415, 415]]), 373, (185, 188)).tolist() == [1]


def test_area224_rule_on_hand_computed_boxes():
    # 100x100 box, min side 375: scaled areas 16384, 23593, 33662, 54323, 102400 for the five
    # scales; closest to 224^2 = 50176 is 54323 (scale 874), unlike the released rule (688).
    boxes = np.array([[0, 0, 99, 99], [0, 0, 499, 374]], float)
    assert best_scale_area(boxes, 375, SCALES).tolist() == [3, 0]
    assert best_scale(boxes, 375, SCALES, "area224").tolist() == [3, 0]
    assert best_scale(boxes, 375, SCALES, "released").tolist() == [2, 0]
    with pytest.raises(ValueError):
        best_scale(boxes, 375, SCALES, "nearest")
