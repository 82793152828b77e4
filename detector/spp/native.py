"""Glue to the compiled window pooler (``_spp_kernel.c``), the CPU path of ``WindowPooler``.

The extension is built by ``pip install`` when a C compiler is present (setup.py; it is optional,
so an install without a compiler still works and pools through torch). It takes addresses of
contiguous CPU tensors; this module owns the tensors' layout and keeps them alive during a call.
It knows nothing of bins or cells: ``sppdet.detector.spp.pooler.WindowPooler`` computes those
(with ``bins``) and passes them in as arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

try:
    from sppdet.detector.spp import _spp_kernel
except ImportError:  # built without a C compiler: the torch path pools instead
    _spp_kernel = None

KEY_BYTES = (2, 4)  # the kernel pools 16- and 32-bit floats (float16, bfloat16, float32)
# Output conversions the kernel does (_spp_kernel.c, enum out_kind); others go through torch.
_OUT_SAME, _OUT_HALF_F32, _OUT_BF16_F32 = 0, 1, 2
_CONVERSIONS = {
    (torch.float16, torch.float32): _OUT_HALF_F32,
    (torch.bfloat16, torch.float32): _OUT_BF16_F32,
}


def built() -> bool:
    """Whether the compiled pooler was built and imports."""
    return _spp_kernel is not None


def output_kind(map_dtype: torch.dtype, out_dtype: torch.dtype) -> int | None:
    """How the kernel writes OUT_DTYPE results from MAP_DTYPE maps, or None when it cannot."""
    if not map_dtype.is_floating_point or map_dtype.itemsize not in KEY_BYTES:
        return None
    if map_dtype == out_dtype:
        return _OUT_SAME
    return _CONVERSIONS.get((map_dtype, out_dtype))


@dataclass(frozen=True)
class LevelTable:
    """The pyramid as the kernel reads it: one int64 entry per level, in pyramid order."""

    n: torch.Tensor  # bins per side
    source: torch.Tensor  # -1: computed from the map; else the index of the finer level
    bin_first: torch.Tensor  # a computed level's first column in the bins arrays
    row_first: torch.Tensor  # first pooled row: sum of n^2 over the levels before it
    out_first: torch.Tensor  # first output column: C * row_first
    order: torch.Tensor  # level indices, each after its source
    computed_bins: int  # sum of n over the computed levels (the bins arrays' width)
    pooled_rows: int  # sum of n^2

    @classmethod
    def build(
        cls, levels: Sequence[int], sources: dict[int, int | None], channels: int
    ) -> LevelTable:
        """SOURCES maps each level to the finer level it is reduced from, or None
        (bins.level_plan)."""
        index = {n: i for i, n in enumerate(levels)}
        source = [-1 if sources[n] is None else index[sources[n]] for n in levels]
        bin_first, row_first, bins, rows = [], [], 0, 0
        for n, src in zip(levels, source, strict=True):
            bin_first.append(bins if src < 0 else -1)
            bins += n if src < 0 else 0
            row_first.append(rows)
            rows += n * n
        order = sorted(range(len(levels)), key=lambda i: -levels[i])  # sources are finer

        def ints(values: Sequence[int]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.int64)

        return cls(
            n=ints(levels),
            source=ints(source),
            bin_first=ints(bin_first),
            row_first=ints(row_first),
            out_first=ints([channels * r for r in row_first]),
            order=ints(order),
            computed_bins=bins,
            pooled_rows=rows,
        )


def _address(tensor: torch.Tensor, dtype: torch.dtype | None = None) -> int:
    if tensor.device.type != "cpu" or not tensor.is_contiguous():
        raise ValueError("the compiled pooler takes contiguous CPU tensors")
    if dtype is not None and tensor.dtype != dtype:
        raise ValueError(f"expected {dtype}, got {tensor.dtype}")
    return tensor.data_ptr()


def to_keys(
    maps: Sequence[torch.Tensor], keys: torch.Tensor, lowest: int, nan: int, threads: int
) -> list[int]:
    """Write each conv map [C, H, W] channels-last into KEYS [>= sum H*W, C] as ordered keys
    (``keys.ordered_limits`` gives LOWEST and NAN), one map after another. Returns each map's
    first row in KEYS."""
    firsts, row = [], 0
    width = keys.element_size()
    for conv in maps:
        channels, cells = conv.shape[0], conv.shape[1] * conv.shape[2]
        if conv.element_size() != width or keys.shape[1] != channels:
            raise ValueError("keys must be [cells, C] of the maps' width")
        rows = keys[row : row + cells]
        if rows.shape[0] != cells:
            raise ValueError("keys hold fewer cells than the maps")
        conv = conv.contiguous()
        _spp_kernel.to_keys(
            _address(conv), _address(rows), channels, cells, width, lowest, nan, threads
        )
        firsts.append(row)
        row += cells
    return firsts


def pool(
    keys: torch.Tensor,
    base: torch.Tensor,
    map_width: torch.Tensor,
    cells: torch.Tensor,
    xbins: torch.Tensor,
    ybins: torch.Tensor,
    table: LevelTable,
    out: torch.Tensor,
    kind: int,
    threads: int,
) -> None:
    """Pool N windows into OUT [N, C * sum n^2] (rows may be strided, columns contiguous).

    KEYS [cells, C] from ``to_keys``; per window: BASE, the first row of its map in KEYS,
    MAP_WIDTH, that map's width, CELLS [N, 4] inclusive x1 y1 x2 y2; XBINS/YBINS [N, S, 2] the
    start and (exclusive) end of the bins of every computed level, level after level. KIND is
    ``output_kind(map dtype, OUT's dtype)``.
    """
    n, channels = cells.shape[0], keys.shape[1]
    if out.shape != (n, channels * table.pooled_rows) or out.stride(1) != 1:
        raise ValueError("out must be [N, C * sum n^2] with contiguous rows")
    bins_shape = (n, table.computed_bins, 2)
    if out.device.type != "cpu" or xbins.shape != bins_shape or ybins.shape != bins_shape:
        raise ValueError("out must be on the CPU, and the bins [N, S, 2]")
    max_width = int((cells[:, 2] - cells[:, 0]).max()) + 1 if n else 1
    i64 = torch.int64
    _spp_kernel.pool(
        _address(keys),
        channels,
        keys.element_size(),
        _address(base, i64),
        _address(map_width, i64),
        _address(cells, i64),
        n,
        _address(xbins, i64),
        _address(ybins, i64),
        table.computed_bins,
        len(table.n),
        _address(table.n, i64),
        _address(table.source, i64),
        _address(table.bin_first, i64),
        _address(table.row_first, i64),
        _address(table.out_first, i64),
        _address(table.order, i64),
        table.pooled_rows,
        max_width,
        out.data_ptr(),
        out.stride(0),
        kind,
        threads,
    )


def halves_to_floats(bits: torch.Tensor, portable: bool = False) -> torch.Tensor:
    """float16 bit patterns (int16) -> float32 bit patterns (int32), as the kernel converts
    pooled float16 values: through F16C where the CPU has it, else (or when PORTABLE) through
    integer arithmetic. For checking both against torch's conversion."""
    bits = bits.contiguous()
    floats = torch.empty(bits.shape, dtype=torch.int32)
    _spp_kernel.halves_to_floats(
        _address(bits, torch.int16), _address(floats), bits.numel(), portable
    )
    return floats
