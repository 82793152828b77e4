"""Tests of ``sppdet.detector.spp.pooler``.

Window SPP on both CPU paths (torch sparse tables, the compiled kernel) against the direct
reference, exhaustively on the Appendix A bins, on signed, infinite and NaN maps, with exact dtype
conversion and result reuse; torchvision's roi_pool and pool5 for comparison.
"""

from __future__ import annotations

import shutil
import sysconfig

import numpy as np
import pytest
import torch
import torchvision

from sppdet.detector.spp import native as spp_native
from sppdet.detector.spp.bins import pyramid_dim
from sppdet.detector.spp.pooler import WindowPooler, window_spp, window_spp_roi_pool
from tests.detector.spp.shared import NOT_BUILT, random_cells, reference_spp

# Every pooler test runs on both CPU paths: the torch tables and the compiled kernel.
KERNELS = [
    "torch",
    pytest.param("native", marks=pytest.mark.skipif(not spp_native.built(), reason=NOT_BUILT)),
]


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
