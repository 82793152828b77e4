"""Tests of ``sppdet.detector.spp.native``: the compiled window pooler (_spp_kernel.c) against the
torch path and the SPEC reference: bit for bit, on every dtype it takes, many maps, any thread
count."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sppdet.detector.spp import native as spp_native
from sppdet.detector.spp.bins import pyramid_dim
from sppdet.detector.spp.pooler import WindowPooler
from tests.detector.spp.shared import NOT_BUILT, random_cells, reference_spp

pytestmark = pytest.mark.skipif(not spp_native.built(), reason=NOT_BUILT)


def bits(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor's bit patterns, so that NaNs compare too."""
    return tensor.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[tensor.element_size()])


def both(maps, cells, pyramid=(1, 2, 3, 6), which=None, out_dtype=None):
    """(native, torch) results of the same call."""
    results = []
    for kernel in ("native", "torch"):
        out = None
        if out_dtype is not None:
            dim = pyramid_dim(pyramid, maps[0].shape[0])
            out = torch.empty(len(cells), dim, dtype=out_dtype)
        pooler = WindowPooler(kernel=kernel)
        results.append(pooler.pool(maps, cells, pyramid, map_index=which, out=out))
    return results


@pytest.mark.parametrize(
    "map_dtype,out_dtype",
    [
        (torch.float16, torch.float16),
        (torch.float16, torch.float32),
        (torch.bfloat16, torch.bfloat16),
        (torch.bfloat16, torch.float32),
        (torch.float32, torch.float32),
    ],
)
@pytest.mark.parametrize("pyramid", [(1, 2, 3, 6), (6, 3, 2, 1), (7,), (1, 2, 4), (5, 3, 1)])
def test_native_equals_torch_and_the_reference_on_signed_maps(map_dtype, out_dtype, pyramid):
    rng = np.random.default_rng(21)
    shapes = ((40, 57), (1, 1), (13, 13), (3, 90))  # odd widths: no whole SIMD blocks
    maps = [torch.from_numpy(rng.standard_normal((10, h, w))).to(map_dtype) for h, w in shapes]
    maps[2][3] = -0.0
    maps[2][4, 2:9, 1:5] = math.inf
    maps[0][5, 7, 7] = -math.inf
    which = rng.integers(0, len(maps), 500)
    cells = np.zeros((500, 4), np.int64)
    for k, conv in enumerate(maps):
        rows = which == k
        cells[rows] = random_cells(rng, int(rows.sum()), *conv.shape[1:])
    native, reference = both(maps, cells, pyramid, which, out_dtype)
    assert native.dtype == (out_dtype or map_dtype)
    assert torch.equal(bits(native), bits(reference))
    want = np.zeros(native.shape, np.float32)
    for k, conv in enumerate(maps):
        rows = which == k
        want[rows] = reference_spp(conv.float().numpy(), cells[rows], pyramid)
    assert np.array_equal(native.float().numpy(), want)


@pytest.mark.parametrize("map_dtype", [torch.float16, torch.bfloat16])
def test_every_16_bit_pattern_pools_and_converts_like_torch(map_dtype):
    """A 1x1 map with one channel per bit pattern: each pools to itself, through the flip to
    ordered keys and back, and float32 output converts it as torch does (NaNs with the sign bit
    set become the positive NaN on both paths)."""
    patterns = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16)
    conv = patterns.view(map_dtype).reshape(-1, 1, 1)
    cells = np.zeros((3, 4), np.int64)
    for out_dtype in (map_dtype, torch.float32):
        native, reference = both([conv], cells, (1, 2), out_dtype=out_dtype)
        assert torch.equal(bits(native), bits(reference))
        values = conv.reshape(-1).to(out_dtype)
        number = ~torch.isnan(values)
        assert torch.equal(bits(native[0, : len(values)][number]), bits(values[number]))


def test_half_conversion_is_torchs_on_every_bit_pattern_both_ways():
    patterns = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16)
    want = patterns.view(torch.float16).float().view(torch.int32)  # NaNs come out quiet
    assert torch.equal(spp_native.halves_to_floats(patterns), want)  # F16C where present
    assert torch.equal(spp_native.halves_to_floats(patterns, portable=True), want)
    odd = patterns[5:16]  # shorter than one 8-wide block, unaligned
    assert torch.equal(spp_native.halves_to_floats(odd), want[5:16])


def test_results_do_not_depend_on_the_thread_count():
    rng = np.random.default_rng(22)
    conv = torch.from_numpy(np.maximum(rng.standard_normal((64, 50, 70)), 0)).half()
    cells = random_cells(rng, 700, 50, 70)
    before = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 5):
            torch.set_num_threads(threads)
            results.append(WindowPooler(kernel="native").pool(conv, cells))
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(r, results[0]) for r in results)


def test_output_rows_may_be_strided_and_other_columns_are_untouched():
    rng = np.random.default_rng(23)
    conv = torch.from_numpy(rng.standard_normal((8, 20, 30))).half()
    cells = random_cells(rng, 40, 20, 30)
    wide = torch.full((40, 8 * 50 + 13), -5.0)
    out = wide[:, 7 : 7 + 8 * 50]  # rows 413 apart
    WindowPooler(kernel="native").pool(conv, cells, out=out)
    want = reference_spp(conv.float().numpy(), cells, (1, 2, 3, 6))
    assert np.array_equal(out.numpy(), want)
    assert (wide[:, :7] == -5).all() and (wide[:, 7 + 8 * 50 :] == -5).all()


def test_whole_map_windows_of_a_wide_map():
    conv = torch.arange(3 * 4 * 300, dtype=torch.float32).reshape(3, 4, 300)
    cells = np.array([[0, 0, 299, 3], [299, 3, 299, 3], [0, 0, 0, 0], [17, 1, 250, 2]])
    got = WindowPooler(kernel="native").pool(conv, cells)
    assert np.array_equal(got.numpy(), reference_spp(conv.numpy(), cells, (1, 2, 3, 6)))


def test_native_kernel_refuses_what_it_cannot_pool_and_auto_falls_back():
    conv = torch.rand(4, 6, 6, dtype=torch.float64)
    cells = np.array([[0, 0, 5, 5]])
    with pytest.raises(ValueError, match="compiled pooler takes CPU maps"):
        WindowPooler(kernel="native").pool(conv, cells)
    with pytest.raises(ValueError, match="compiled pooler takes CPU maps"):
        WindowPooler(kernel="native").pool(
            conv.half(), cells, out=torch.empty(1, 200, dtype=torch.float64)
        )
    auto = WindowPooler().pool(conv, cells)  # float64: the torch path
    assert np.array_equal(auto.numpy(), reference_spp(conv.numpy(), cells, (1, 2, 3, 6)))
    with pytest.raises(ValueError, match="unknown pooling kernel"):
        WindowPooler(kernel="fast")
