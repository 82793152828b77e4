"""Window SPP: ``WindowPooler`` pools windows of conv maps into one vector each, exactly.

Windows come as inclusive conv cells (``sppdet.detector.spp.geometry.boxes_to_cells``); the
pooled layout and the bins of each level are those of ``sppdet.detector.spp.bins``. The pooler
runs the compiled kernel (``sppdet.detector.spp.native``) where it applies and sparse tables in
torch elsewhere; both give the same bits (the class docstring says how). ``window_spp`` is the
one-call form; ``window_spp_roi_pool`` pools through torchvision's ``roi_pool``, for comparison.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
import torchvision

from sppdet.detector.spp import native
from sppdet.detector.spp.bins import (
    DEFAULT_PYRAMID,
    Pair,
    check_pyramid,
    level_bins,
    level_plan,
    pyramid_dim,
    table_level,
    table_order,
)
from sppdet.detector.spp.keys import (
    ORDERED_INT,
    advise_huge_pages,
    buffer_shared,
    flip_negative_,
    ordered_limits,
    to_ordered_,
)

POOLING_KERNELS = ("auto", "native", "torch")  # WindowPooler(kernel=...): see ``native``


NOT_BUILT_WARNING = (
    "the compiled window pooler (sppdet.detector.spp._spp_kernel) is not built, so pooling runs "
    "through torch: the same numbers, about 2.3x slower; reinstall sppdet where a C compiler "
    "(gcc or clang) is present"
)


class WindowPooler:
    """Vectorised window SPP over conv maps (one image's scales), with reusable work buffers.

    Two paths compute the same bits. ``kernel="auto"`` (the default) pools CPU maps through the
    compiled kernel (``native``, built by pip when a C compiler is present) wherever it
    applies: float16/bfloat16/float32 maps into their own dtype or float32. It converts the
    maps to channels-last ordered keys and pools each window directly, every level's bins as
    row maxima then column maxima, on all torch threads. Everything else (GPU maps, float64,
    a pooler built with ``kernel="torch"``, an install without the kernel) takes the torch
    path below; ``kernel="native"`` refuses to.

    Torch path, sparse tables: for each map, ``T[a, b][y, x]`` is the max over the 2^a x 2^b
    cells from (y, x), channels last, built with one elementwise max per table and only for the
    (a, b) that some bin uses (``table_order``). A bin is the max of four overlapping lookups
    (``table_level``), so every bin costs the same whatever its size. The tables of all maps
    share one buffer, so windows on different maps (scales) are pooled by one gather, in the
    caller's order. Coarser levels that divide a finer one are reduced from it (``level_plan``).

    Maxima are taken on integers: float maps are viewed as integers of the same width whose
    order is the floats' order (a no-op for maps without negative values, such as ReLU
    outputs; else ``to_ordered_``). Max pooling only selects stored values, so the result is
    exact, and integer maxima run several times faster than float16 ones on CPU. Windows go
    through in chunks of ``chunk``, window-major, so that the gathered rows stay in each
    thread's cache; a chunk ends with one conversion to the output dtype and one transposing
    copy per level into the channel-major output.

    Memory: work buffers are kept between calls and new ones are backed by huge pages
    (``advise_huge_pages``), and so is a result the pooler allocates (``new_result``), whose
    memory is reused once the caller has dropped it. Page faults on fresh memory would
    otherwise cost as much as the pooling.
    """

    def __init__(self, chunk: int = 16, keep_results: int = 2, kernel: str = "auto") -> None:
        if kernel not in POOLING_KERNELS:
            raise ValueError(f"unknown pooling kernel {kernel!r}; choose one of {POOLING_KERNELS}")
        if kernel == "native" and not native.built():
            raise ValueError(
                "the compiled pooler (sppdet.detector.spp._spp_kernel) is not built; reinstall "
                "sppdet with a C compiler present, or use kernel='torch'"
            )
        self.chunk = chunk
        self.kernel = kernel
        self.last_path: str | None = None  # "native" or "torch": what the last call ran on
        self.keep_results = keep_results
        self._buffers: dict[str, torch.Tensor] = {}
        self._results: list[torch.Tensor] = []

    def new_result(
        self, rows: int, dim: int, dtype: torch.dtype, device: torch.device | str = "cpu"
    ) -> torch.Tensor:
        """An uninitialised [ROWS, DIM] tensor to pool into, for a caller that keeps no buffer.

        The memory of an earlier result is reused once nothing references it any more (no
        tensor, view, numpy array or storage object): a fresh 100 MB result would otherwise be
        faulted in page by page, and on a virtual machine that returns freed memory to its
        host that costs more than the pooling. The pooler keeps at most ``keep_results`` such
        buffers alive.
        """
        device = torch.device(device)
        numel = rows * dim
        if numel == 0:
            return torch.empty(rows, dim, dtype=dtype, device=device)
        for buffer in self._results:
            fits = buffer.dtype == dtype and buffer.device == device and buffer.numel() >= numel
            if fits and not buffer_shared(buffer):
                return buffer[:numel].view(rows, dim)
        buffer = torch.empty(numel, dtype=dtype, device=device)
        advise_huge_pages(buffer)
        if self.keep_results > 0:
            self._results = [*self._results, buffer][-self.keep_results :]
        return buffer.view(rows, dim)

    def _buffer(
        self, name: str, shape: Sequence[int], dtype: torch.dtype, device: torch.device
    ) -> torch.Tensor:
        numel = math.prod(shape)
        buf = self._buffers.get(name)
        if buf is None or buf.dtype != dtype or buf.device != device or buf.numel() < numel:
            buf = torch.empty(numel, dtype=dtype, device=device)
            advise_huge_pages(buf)
            self._buffers[name] = buf
        return buf[:numel].view(*shape)

    def pool(
        self,
        maps: torch.Tensor | Sequence[torch.Tensor],
        cells: torch.Tensor | np.ndarray,
        pyramid: Sequence[int] = DEFAULT_PYRAMID,
        map_index: torch.Tensor | np.ndarray | None = None,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """SPP of windows CELLS [N, 4] -> [N, C*sum(n^2)], in OUT's dtype when OUT is given.

        MAPS is one conv map [C, H, W] or a list of them (same C, dtype, device); window i lies on
        ``maps[map_index[i]]`` (map 0 when MAP_INDEX is None). Returns OUT[:N], or without OUT a
        tensor from ``new_result`` in the maps' dtype.
        """
        levels = check_pyramid(pyramid)
        maps, cells, which = _window_inputs(maps, cells, map_index)
        n, channels, dtype, device = cells.shape[0], maps[0].shape[0], maps[0].dtype, maps[0].device
        dim = pyramid_dim(levels, channels)
        if out is None:
            out = self.new_result(n, dim, dtype, device)
        out = out[:n]
        if out.shape != (n, dim):
            raise ValueError(f"out must be [{n}, {dim}], got {tuple(out.shape)}")
        if n == 0:
            return out
        advise_huge_pages(out)
        sizes = torch.tensor([m.shape[1:] for m in maps], dtype=torch.int64, device=device)
        height, width = sizes[which, 0], sizes[which, 1]
        _check_cells(cells, height, width)
        kind = self._native_kind(dtype, device, out)
        self.last_path = "torch" if kind is None else "native"
        if kind is not None:
            self._pool_native(maps, cells, which, width, levels, out, kind)
        else:
            self._pool_torch(maps, cells, which, width, levels, out)
        return out

    def _pool_torch(
        self,
        maps: list[torch.Tensor],
        cells: torch.Tensor,
        which: torch.Tensor,
        width: torch.Tensor,
        levels: tuple[int, ...],
        out: torch.Tensor,
    ) -> None:
        """Pool through sparse tables: each bin of a computed level is the max of four table
        lookups, whose flat row indices are made here; derived levels follow in the chunks."""
        dtype = maps[0].dtype
        key = ORDERED_INT.get(dtype, dtype)
        keyed = [m.view(key) for m in maps]
        plan = level_plan(levels)
        bins = {}
        for m in (m for m, src in plan.items() if src is None):
            xs, xe = level_bins(cells[:, 0], cells[:, 2], m)
            ys, ye = level_bins(cells[:, 1], cells[:, 3], m)
            bins[m] = (xs, xe, ys, ye, table_level(xe - xs), table_level(ye - ys))
        flat, slot, signed = self._tables(keyed, dtype, which, bins)
        index = {}
        for m, (xs, xe, ys, ye, kx, ky) in bins.items():
            start = slot[which[:, None, None], ky[:, :, None], kx[:, None, :]]  # [N, m(y), m(x)]
            rows = torch.stack([ys, ye - (1 << ky)], 1) * width[:, None, None]  # [N, 2, m]
            cols = torch.stack([xs, xe - (1 << kx)], 1)  # first and last lookup of each bin
            corners = rows[:, :, None, :, None] + cols[:, None, :, None, :]  # [N, 2, 2, m, m]
            index[m] = start[:, None] + corners.flatten(1, 2)  # [N, 4, m, m]
        self._pool_chunks(flat, index, _Work(levels, plan, dtype, signed), out)

    def _native_kind(
        self, dtype: torch.dtype, device: torch.device, out: torch.Tensor
    ) -> int | None:
        """The compiled kernel's output kind when it pools this call (maps of DTYPE on
        DEVICE into OUT), else None (torch)."""
        on_cpu = device.type == "cpu" and out.device.type == "cpu"
        if self.kernel == "torch":
            return None
        if not native.built():
            if on_cpu:  # shown once per process (the warnings registry)
                warnings.warn(NOT_BUILT_WARNING, RuntimeWarning, stacklevel=3)
            return None
        kind = native.output_kind(dtype, out.dtype)
        usable = kind is not None and on_cpu and out.stride(1) == 1
        if self.kernel == "native" and not usable:
            raise ValueError(
                "the compiled pooler takes CPU maps of float16, bfloat16 or float32 into "
                f"their own dtype or float32 with contiguous rows; got {dtype} -> {out.dtype} "
                f"on {out.device}"
            )
        return kind if usable else None

    def _pool_native(
        self,
        maps: list[torch.Tensor],
        cells: torch.Tensor,
        which: torch.Tensor,
        width: torch.Tensor,
        levels: tuple[int, ...],
        out: torch.Tensor,
        kind: int,
    ) -> None:
        """Pool through the compiled kernel: the maps that hold windows become channels-last
        ordered keys, then every window's levels are pooled and written in one parallel pass.
        WIDTH [N] is the width of each window's map (``pool`` has it from the cell check)."""
        threads = torch.get_num_threads()
        channels, dtype = maps[0].shape[0], maps[0].dtype
        used = torch.bincount(which, minlength=len(maps)).nonzero().reshape(-1).tolist()
        rows = sum(maps[k].shape[1] * maps[k].shape[2] for k in used)
        keys = self._buffer("keys", (rows, channels), ORDERED_INT[dtype], cells.device)
        lowest, nan = ordered_limits(dtype)
        firsts = native.to_keys([maps[k] for k in used], keys, lowest, nan, threads)
        map_first = torch.zeros(len(maps), dtype=torch.int64)
        map_first[used] = torch.tensor(firsts, dtype=torch.int64)
        plan = level_plan(levels)
        computed = [m for m in levels if plan[m] is None]
        xbins = torch.cat(
            [torch.stack(level_bins(cells[:, 0], cells[:, 2], m), 2) for m in computed], 1
        )
        ybins = torch.cat(
            [torch.stack(level_bins(cells[:, 1], cells[:, 3], m), 2) for m in computed], 1
        )
        native.pool(
            keys,
            map_first[which],
            width,
            cells.contiguous(),
            xbins.contiguous(),
            ybins.contiguous(),
            native.LevelTable.build(levels, plan, channels),
            out,
            kind,
            threads,
        )

    def _tables(
        self,
        keyed: list[torch.Tensor],
        dtype: torch.dtype,
        which: torch.Tensor,
        bins: dict[int, tuple[torch.Tensor, ...]],
    ) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """Build the sparse tables the bins look up, for the maps that hold windows.

        Returns the tables [rows, C] (all maps, one buffer), the first row of table (a, b) of
        map k at ``slot[k, a, b]``, and whether the maps needed the ordered-integer flip.
        """
        channels, device, key = keyed[0].shape[0], keyed[0].device, keyed[0].dtype
        depth = 1 + max(int(torch.maximum(kx.max(), ky.max())) for *_, kx, ky in bins.values())
        used = torch.zeros(len(keyed) * depth * depth, dtype=torch.int64, device=device)
        for *_, kx, ky in bins.values():
            code = (which[:, None, None] * depth + ky[:, :, None]) * depth + kx[:, None, :]
            used += torch.bincount(code.reshape(-1), minlength=used.numel())
        needed: dict[int, list[Pair]] = {}
        for code in used.nonzero().reshape(-1).tolist():
            needed.setdefault(code // (depth * depth), []).append(
                divmod(code % (depth * depth), depth)
            )
        orders = {k: table_order(pairs) for k, pairs in needed.items()}
        slot = torch.full((len(keyed), depth, depth), -1, dtype=torch.int64)
        rows = 0
        for k, order in orders.items():
            h, w = keyed[k].shape[1:]
            for (a, b), _ in order:
                slot[k, a, b] = rows
                rows += h * w
        flat = self._buffer("tables", (rows, channels), key, device)
        signed = key != dtype and any(bool(keyed[k].amin() < 0) for k in orders)
        for k, order in orders.items():
            h, w = keyed[k].shape[1:]

            def table(pair: Pair, k: int = k, h: int = h, w: int = w) -> torch.Tensor:
                first = int(slot[k, pair[0], pair[1]])
                return flat[first : first + h * w].view(h, w, channels)

            base = table((0, 0))
            base.copy_(keyed[k].permute(1, 2, 0))
            if signed:
                to_ordered_(base, dtype)
            for (a, b), source in order[1:]:
                prev, dst = table(source), table((a, b))
                if a > source[0]:
                    s = 1 << source[0]
                    torch.maximum(prev[: h - s], prev[s:], out=dst[: h - s])
                else:
                    s = 1 << source[1]
                    torch.maximum(prev[:, : w - s], prev[:, s:], out=dst[:, : w - s])
        return flat, slot.to(device), signed

    def _pool_chunks(
        self, flat: torch.Tensor, index: dict[int, torch.Tensor], work: _Work, out: torch.Tensor
    ) -> None:
        """Gather, reduce and write every chunk of windows into OUT (channel-major levels)."""
        n, channels, levels = out.shape[0], flat.shape[1], work.levels
        offsets = np.cumsum([0] + [channels * m * m for m in levels])
        # Transposing copies run fastest on integers of the output's width.
        out_key = ORDERED_INT.get(out.dtype, out.dtype)
        blocks = [
            out.view(out_key)[:, offsets[i] : offsets[i + 1]].view(n, channels, m * m)
            for i, m in enumerate(levels)
        ]
        lookups = {m: idx.flatten(1) for m, idx in index.items()}  # [N, 4 * m * m]
        size, steps = 0, _ChunkSteps({}, [], [])
        for start in range(0, n, self.chunk):
            stop = min(start + self.chunk, n)
            if stop - start != size:  # the views below serve every chunk of this size
                size = stop - start
                steps = self._chunk_steps(size, flat, work, out.dtype)
            for m, gathered in steps.gathered.items():
                torch.index_select(flat, 0, lookups[m][start:stop].reshape(-1), out=gathered)
            for step in steps.reduce:
                step()
            for block, values in zip(blocks, steps.levels, strict=True):
                block[start:stop].copy_(values)

    def _chunk_steps(
        self, g: int, flat: torch.Tensor, work: _Work, out_dtype: torch.dtype
    ) -> _ChunkSteps:
        """Buffers and views of the work on a chunk of G windows, made once per chunk size:
        Python-side tensor bookkeeping would otherwise cost as much as the maxima.

        A chunk's windows are pooled into ``pooled`` [g, sum n^2, C] (levels in pyramid order,
        ordered integers, window-major so that both threads keep their half of the windows in
        their own cache through all steps): each computed level is the max over the 4 gathered
        corners of its bins, each derived level the max over blocks of a finer one (``level_plan``).
        """
        channels, key, device = flat.shape[1], flat.dtype, flat.device
        levels, plan, dtype = work.levels, work.plan, work.dtype
        firsts = np.cumsum([0] + [m * m for m in levels])
        bins_at = {m: (int(firsts[i]), int(firsts[i + 1])) for i, m in enumerate(levels)}
        pooled = self._buffer("pooled", (g, int(firsts[-1]), channels), key, device)
        gathered, reduce = {}, []
        for m in sorted(plan, reverse=True):
            target = pooled[:, bins_at[m][0] : bins_at[m][1]]
            src = plan[m]
            if src is None:
                got = self._buffer(f"gather{m}", (g * 4 * m * m, channels), key, device)
                gathered[m] = got
                corners = got.view(g, 4, m * m, channels)
                pair = corners[:, :2]  # max of corners 0, 2 and of 1, 3, in place, then of both
                reduce.append(partial(torch.maximum, pair, corners[:, 2:], out=pair))
                reduce.append(partial(torch.maximum, pair[:, 0], pair[:, 1], out=target))
                continue
            # Level m from level src = r*m: max over r rows of finer bins, then r columns.
            r = src // m
            finer = pooled[:, bins_at[src][0] : bins_at[src][1]].view(g, m, r, src, channels)
            rows = self._buffer(f"coarsen{m}", (g, m, src, channels), key, device)
            cols = rows.view(g, m, m, r, channels)
            target = target.view(g, m, m, channels)
            for into, parts in ((rows, finer.unbind(2)), (target, cols.unbind(3))):
                reduce.append(partial(torch.maximum, parts[0], parts[1], out=into))
                reduce.extend(partial(torch.maximum, into, part, out=into) for part in parts[2:])
        if work.signed:
            reduce.append(partial(flip_negative_, pooled))
        values = pooled.view(dtype)
        if out_dtype != dtype:
            converted = self._buffer("converted", pooled.shape, out_dtype, device)
            reduce.append(partial(converted.copy_, values))
            values = converted
        values = values.view(ORDERED_INT.get(out_dtype, out_dtype))
        transposed = [values[:, bins_at[m][0] : bins_at[m][1]].transpose(1, 2) for m in levels]
        return _ChunkSteps(gathered, reduce, transposed)


@dataclass(frozen=True)
class _Work:
    levels: tuple[int, ...]  # the pyramid
    plan: dict[int, int | None]  # level -> the finer level it is reduced from (``level_plan``)
    dtype: torch.dtype  # the maps' dtype
    signed: bool  # the maps' integer views needed the order-preserving flip


@dataclass(frozen=True)
class _ChunkSteps:
    gathered: dict[int, torch.Tensor]  # level -> [g * 4 * m * m, C], filled by the gather
    reduce: list[Callable[[], object]]  # maxima, derived levels, flip, dtype conversion
    levels: list[torch.Tensor]  # per level, the chunk's result as [g, C, m*m] (a view)


def _window_inputs(
    maps: torch.Tensor | Sequence[torch.Tensor],
    cells: torch.Tensor | np.ndarray,
    map_index: torch.Tensor | np.ndarray | None,
) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """``pool``'s arguments checked and on the maps' device: the maps as a list, the cells
    [N, 4] int64 and the map index [N] of each window."""
    maps = [maps] if torch.is_tensor(maps) else list(maps)
    first = maps[0]
    if any(m.dim() != 3 or m.shape[0] != first.shape[0] for m in maps):
        raise ValueError("conv maps must be [C, H, W] with the same C")
    if any(m.dtype != first.dtype or m.device != first.device for m in maps):
        raise ValueError("conv maps must share one dtype and device")
    device = first.device
    cells = torch.as_tensor(np.asarray(cells) if not torch.is_tensor(cells) else cells)
    cells = cells.to(device, torch.int64).reshape(-1, 4)
    n = cells.shape[0]
    which = torch.zeros(n, dtype=torch.int64, device=device)
    if map_index is not None:
        which = torch.as_tensor(
            np.asarray(map_index) if not torch.is_tensor(map_index) else map_index
        )
        which = which.to(device, torch.int64).reshape(-1)
        if which.shape != (n,) or (n and (which.min() < 0 or which.max() >= len(maps))):
            raise ValueError(f"map_index must hold {n} indices into {len(maps)} maps")
    return maps, cells, which


def _check_cells(cells: torch.Tensor, height: torch.Tensor, width: torch.Tensor) -> None:
    ok = (cells[:, 0] >= 0) & (cells[:, 1] >= 0) & (cells[:, 2] < width) & (cells[:, 3] < height)
    ok &= (cells[:, 2] >= cells[:, 0]) & (cells[:, 3] >= cells[:, 1])
    if not bool(ok.all()):
        i = int((~ok).nonzero()[0, 0])
        raise ValueError(
            f"window cells {cells[i].tolist()} are not inside the "
            f"{int(height[i])}x{int(width[i])} map"
        )


def window_spp(
    conv_map: torch.Tensor,
    cells: torch.Tensor | np.ndarray,
    pyramid: Sequence[int] = DEFAULT_PYRAMID,
) -> torch.Tensor:
    """SPP of N windows (inclusive cells [N, 4]) on one conv map [C, H, W] -> [N, C*sum(n^2)]."""
    return WindowPooler().pool(conv_map, cells, pyramid)


def window_spp_roi_pool(
    conv_map: torch.Tensor,
    cells: torch.Tensor | np.ndarray,
    pyramid: Sequence[int] = DEFAULT_PYRAMID,
) -> torch.Tensor:
    """The same pooling through ``torchvision.ops.roi_pool`` (float32), for comparison.

    With integer cell corners and spatial_scale 1, roi_pool's bin i spans
    ``[x1 + floor(i*bin), x1 + ceil((i+1)*bin))`` with bin = w/n computed in float32. That is the
    Appendix A binning for levels 1-6 (checked exhaustively up to 157 cells), but not always for
    n = 7, 11 or 13: for n = 7 and w = 57, 7 * float32(57/7) rounds above 57 and the last bin takes
    one cell beyond the window. It is also ~5x slower on CPU, so ``WindowPooler`` does not use it.
    """
    levels = check_pyramid(pyramid)
    cells = torch.as_tensor(np.asarray(cells) if not torch.is_tensor(cells) else cells)
    cells = cells.to(conv_map.device, torch.float32).reshape(-1, 4)
    rois = torch.cat([torch.zeros_like(cells[:, :1]), cells], 1)
    x = conv_map.detach()[None].float()
    parts = [torchvision.ops.roi_pool(x, rois, n, 1.0).flatten(1) for n in levels]
    return torch.cat(parts, 1)
