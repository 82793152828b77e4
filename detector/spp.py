"""Spatial pyramid pooling: window -> conv5 cells, window SPP, whole-image SPP, best scale.

Conventions
-----------
* Boxes are 0-based pixel indices, x1 y1 x2 y2, both ends inclusive (``sppdet.detector.data``).
* Cells are 0-based integer indices on a conv map, x1 y1 x2 y2, both ends inclusive.
* A pooled window is ``[C * sum(n*n)]`` long: pyramid levels in the given order; inside a level
  channel-major, index ``c*n*n + y*n + x`` (SPEC.md).
* Bin i of a level with n bins over a window h cells tall covers rows
  ``[floor(i*h/n), ceil((i+1)*h/n))`` from the window's first row (paper, Appendix A); columns
  likewise. Bins are never empty and may overlap.

Window -> cells
---------------
The centre of conv cell j's receptive field is pixel ``stride*j + offset``; both numbers follow
from the trunk's layer list (``layer_geometry``): offset = sum over layers of
``((k-1)/2 - p) * (product of the strides below)``. ZF-5 gives (16, 20), AlexNet (16, 15),
VGG-16 (16, 7.5). A window edge is moved ``shift`` pixels inward and projected onto the cell whose
receptive-field centre is nearest (the paper's "closest to the center of the receptive field"):

    left  = floor((x1 + shift - offset) / stride + 1/2)     (round half up)
    right = ceil((x2 - shift - offset) / stride - 1/2)      (round half down)

``shift`` is 6.5 px in the released code ("released"); the paper's Appendix A rule
(left = floor(x/S) + 1, right = ceil(x/S) - 1 with centres at S*x') is the same formula with
shift = S/2 and offset 0 ("paper"; the trunk's real offset is added as the appendix says). For
ZF-5 and "released" this is exactly the released code in 1-based units:
``l' = floor((l - 6.5)/16) + 1``, ``r' = ceil((r - 35.5)/16) + 1`` (offset0 = 21, offset = 6.5).
When left > right (a window narrower than about 13 px) both become floor((left + right)/2), as
in the released code; then cells are clamped to the map.

Before mapping, a box is brought to the cached scale with the released code's corner-aligned
factor ``(s - 1)/(min(H, W) - 1)`` where s is the effective scale (the resized image's shorter
side; see ``featurize`` for what ``--max-size`` does to it).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torchvision
from torch import nn
from torch.nn import functional as F

DEFAULT_PYRAMID = (1, 2, 3, 6)
RELEASED_EDGE_SHIFT = 6.5  # pixels an edge moves inward before projection (released SPP_net code)
MAPPING_RULES = ("released", "paper")
SCALE_RULES = ("released", "area224")


# ----------------------------------------------------------------------------- cell geometry


@dataclass(frozen=True)
class CellGeometry:
    """Where conv cells sit in the input image: cell j's receptive field is centred on pixel
    ``stride * j + offset`` (0-based) and spans ``receptive_field`` pixels."""

    stride: int
    offset: float
    receptive_field: int

    def centre(self, cells: np.ndarray) -> np.ndarray:
        return self.stride * np.asarray(cells, np.float64) + self.offset

    def to_dict(self) -> dict[str, float]:
        return {
            "stride": self.stride,
            "offset": self.offset,
            "receptive_field": self.receptive_field,
        }


def layer_geometry(layers: Iterable[tuple[int, int, int]]) -> CellGeometry:
    """Geometry of the top of a stack of (kernel, stride, padding) layers, listed bottom first.

    Output position j of a layer sits at input position ``s*j - p + (k-1)/2``; composing the
    layers gives ``S*j + offset``. Ceil-mode pooling changes the map size, not the positions.
    """
    stride, offset, field = 1, 0.0, 1
    for kernel, step, pad in layers:
        offset += ((kernel - 1) / 2 - pad) * stride
        field += (kernel - 1) * stride
        stride *= step
    return CellGeometry(stride, offset, field)


def _pair_first(value: int | Sequence[int], what: str) -> int:
    if isinstance(value, int):
        return value
    if len(set(value)) != 1:
        raise ValueError(f"non-square {what} {value} is not supported by the cell mapping")
    return int(value[0])


def module_layers(module: nn.Module) -> list[tuple[int, int, int]]:
    """(kernel, stride, padding) of every convolution and pooling layer of MODULE, in order."""
    layers = []
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            kernel = _pair_first(layer.kernel_size, "kernel")
            stride = _pair_first(layer.stride, "stride")
            pad = _pair_first(layer.padding, "padding")
            dilation = getattr(layer, "dilation", 1)
            if _pair_first(dilation, "dilation") != 1:
                raise ValueError("dilated layers are not supported by the cell mapping")
            layers.append((kernel, stride, pad))
    return layers


def edge_shift(rule: str, geometry: CellGeometry) -> float:
    """Pixels each window edge moves inward before projection, for a mapping RULE."""
    if rule == "released":
        return RELEASED_EDGE_SHIFT
    if rule == "paper":
        return geometry.stride / 2
    raise ValueError(f"unknown window mapping rule {rule!r}; choose one of {MAPPING_RULES}")


def scale_factor(effective_scale: np.ndarray | float, min_side: float) -> np.ndarray:
    """The released code's box scaling, 0-based: x_s = x * (s - 1) / (min(H, W) - 1)."""
    return (np.asarray(effective_scale, np.float64) - 1) / max(float(min_side) - 1, 1.0)


def boxes_to_cells(
    boxes: np.ndarray,
    factor: np.ndarray | float,
    geometry: CellGeometry,
    map_height: np.ndarray | int,
    map_width: np.ndarray | int,
    shift: float = RELEASED_EDGE_SHIFT,
) -> np.ndarray:
    """Windows in original-image pixels -> inclusive conv cells [N, 4] int64, inside the map.

    FACTOR scales each box to its cached scale (scalar or [N]); MAP_HEIGHT/MAP_WIDTH are the conv
    map sizes at that scale (scalar or [N]).
    """
    b = np.asarray(boxes, np.float64).reshape(-1, 4) * np.asarray(factor, np.float64).reshape(-1, 1)
    lo = np.floor((b[:, :2] + shift - geometry.offset) / geometry.stride + 0.5)
    hi = np.ceil((b[:, 2:] - shift - geometry.offset) / geometry.stride - 0.5)
    degenerate = lo > hi
    middle = np.floor((lo + hi) / 2)
    lo = np.where(degenerate, middle, lo)
    hi = np.where(degenerate, middle, hi)
    limit = np.stack(
        np.broadcast_arrays(np.asarray(map_width) - 1, np.asarray(map_height) - 1), -1
    ).reshape(-1, 2)
    lo = np.clip(lo, 0, limit)
    hi = np.clip(hi, 0, limit)
    return np.concatenate([lo, hi], 1).astype(np.int64)


# ------------------------------------------------------------------------------- pyramid bins


def pyramid_dim(pyramid: Sequence[int], channels: int) -> int:
    """Length of one pooled vector: C * sum(n^2)."""
    return channels * sum(n * n for n in pyramid)


def check_pyramid(pyramid: Sequence[int]) -> tuple[int, ...]:
    levels = tuple(int(n) for n in pyramid)
    if not levels or min(levels) < 1 or len(set(levels)) != len(levels):
        raise ValueError(f"a pyramid is distinct positive level sizes, got {pyramid}")
    return levels


def level_bins(lo: torch.Tensor, hi: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Bin starts and ends (exclusive) [N, n] of windows lo..hi (inclusive cells) split in n."""
    length = (hi - lo + 1)[:, None]
    i = torch.arange(n, dtype=torch.int64, device=lo.device)[None]
    start = lo[:, None] + (i * length) // n
    end = lo[:, None] + ((i + 1) * length + n - 1) // n
    return start, end


def _floor_log2(length: torch.Tensor) -> torch.Tensor:
    # frexp: x = m * 2**e with m in [0.5, 1), so floor(log2 x) = e - 1, exactly for integers.
    return torch.frexp(length.to(torch.float64)).exponent.to(torch.int64) - 1


def _plan(levels: tuple[int, ...]) -> dict[int, int | None]:
    """For each level, the finer level it is derived from (n divides m), or None to compute it.

    Level n's bin j is the union of level m's bins j*r .. j*r + r - 1 when m = r*n, exactly
    (consecutive bins touch or overlap), so its max is the max of those bins' maxes.
    """
    plan: dict[int, int | None] = {}
    for n in sorted(levels, reverse=True):
        sources = [m for m in plan if m % n == 0]
        plan[n] = min(sources) if sources else None
    return plan


def _reduce_axis(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Max over DIM with a chain of elementwise maxima (faster than amax on strided views)."""
    parts = x.unbind(dim)
    out = parts[0].clone() if len(parts) == 1 else torch.maximum(parts[0], parts[1])
    for part in parts[2:]:
        torch.maximum(out, part, out=out)
    return out


class WindowPooler:
    """Vectorised window SPP over conv maps (one image's scales), with reusable work buffers.

    Sparse tables: for each map, ``T[a, b][y, x]`` is the max over the 2^a x 2^b cells from
    (y, x), built with one elementwise max per table. A bin of h x w cells is the max of four
    overlapping lookups with a = floor(log2 h), b = floor(log2 w), so every bin costs the same
    whatever its size. The tables of all maps share one buffer, so a batch of windows that lie
    on different maps (scales) is pooled by one gather, in the caller's order. Coarser levels
    that divide a finer one are reduced from it (``_plan``). Everything runs in the maps' dtype:
    max pooling only selects stored values, so float16 is exact. Windows go through in chunks
    of ``chunk`` so the gathered rows stay in cache. Work buffers are kept between calls: fresh
    multi-megabyte allocations cost page faults that would dominate the run time.
    """

    def __init__(self, chunk: int = 32) -> None:
        self.chunk = chunk
        self._buffers: dict[str, torch.Tensor] = {}

    def _buffer(
        self, name: str, numel: int, dtype: torch.dtype, device: torch.device
    ) -> torch.Tensor:
        buf = self._buffers.get(name)
        if buf is None or buf.dtype != dtype or buf.device != device or buf.numel() < numel:
            buf = torch.empty(numel, dtype=dtype, device=device)
            self._buffers[name] = buf
        return buf[:numel]

    @staticmethod
    def _build(tables: torch.Tensor, conv_map: torch.Tensor) -> None:
        """Fill TABLES [A, B, H, W, C] for CONV_MAP [C, H, W]."""
        rows, cols, h, w, _ = tables.shape
        tables[0, 0].copy_(conv_map.permute(1, 2, 0))
        for b in range(1, cols):
            s = 1 << (b - 1)
            prev = tables[0, b - 1]
            torch.maximum(prev[:, : w - s], prev[:, s:], out=tables[0, b, :, : w - s])
        for a in range(1, rows):
            s = 1 << (a - 1)
            prev = tables[a - 1]
            torch.maximum(prev[:, : h - s], prev[:, s:], out=tables[a, :, : h - s])

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
        ``maps[map_index[i]]`` (map 0 when MAP_INDEX is None). Returns OUT[:N] or a new tensor.
        """
        levels = check_pyramid(pyramid)
        maps = [maps] if torch.is_tensor(maps) else list(maps)
        first = maps[0]
        if any(m.dim() != 3 or m.shape[0] != first.shape[0] for m in maps):
            raise ValueError("conv maps must be [C, H, W] with the same C")
        channels, device, dtype = first.shape[0], first.device, first.dtype
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
        dim = pyramid_dim(levels, channels)
        out = torch.empty(n, dim, dtype=dtype, device=device) if out is None else out[:n]
        if out.shape != (n, dim):
            raise ValueError(f"out must be [{n}, {dim}], got {tuple(out.shape)}")
        if n == 0:
            return out
        sizes = torch.tensor([m.shape[1:] for m in maps], dtype=torch.int64, device=device)
        height, width = sizes[which, 0], sizes[which, 1]
        _check_cells(cells, height, width)
        plan = _plan(levels)
        bins = {}
        for m in (m for m, src in plan.items() if src is None):
            xs, xe = level_bins(cells[:, 0], cells[:, 2], m)
            ys, ye = level_bins(cells[:, 1], cells[:, 3], m)
            bins[m] = (xs, xe, ys, ye, _floor_log2(xe - xs), _floor_log2(ye - ys))
        # Table depth per map: enough for its widest and tallest bins.
        depth = torch.zeros(len(maps), 2, dtype=torch.int64, device=device)
        for *_, kx, ky in bins.values():
            k = torch.stack([ky.amax(1), kx.amax(1)], 1)
            depth = depth.scatter_reduce(0, which[:, None].expand(-1, 2), k, "amax")
        depth = (depth + 1).tolist()
        counts = [a * b * h * w for (a, b), (h, w) in zip(depth, sizes.tolist(), strict=True)]
        used = torch.bincount(which, minlength=len(maps)).tolist()
        starts = np.cumsum([0] + [c if u else 0 for c, u in zip(counts, used, strict=True)])
        flat = self._buffer("tables", int(starts[-1]) * channels, dtype, device)
        flat = flat.view(-1, channels)
        for k, conv in enumerate(maps):
            if used[k]:
                a, b = depth[k]
                h, w = conv.shape[1:]
                self._build(flat[starts[k] : starts[k + 1]].view(a, b, h, w, channels), conv)
        base = torch.as_tensor(starts[:-1], device=device)[which][:, None, None]
        cols = torch.tensor([b for _, b in depth], device=device)[which][:, None, None]
        rows_h, rows_w = height[:, None, None], width[:, None, None]
        index = {}
        for m, (xs, xe, ys, ye, kx, ky) in bins.items():
            table = base + (ky[:, :, None] * cols + kx[:, None, :]) * rows_h * rows_w  # [N,m,m]
            ycorners = (ys, ye - (1 << ky))
            xcorners = (xs, xe - (1 << kx))
            index[m] = torch.stack(
                [
                    table + y[:, :, None] * rows_w + x[:, None, :]
                    for y in ycorners
                    for x in xcorners
                ],
                1,
            )  # [N, 4, m(y), m(x)]
        offsets = np.cumsum([0] + [channels * m * m for m in levels])
        for start in range(0, n, self.chunk):
            stop = min(start + self.chunk, n)
            g = stop - start
            pooled: dict[int, torch.Tensor] = {}
            for m in sorted(plan, reverse=True):
                src = plan[m]
                if src is None:
                    idx = index[m][start:stop].reshape(-1)
                    got = self._buffer(f"gather{m}", idx.numel() * channels, dtype, device)
                    got = torch.index_select(flat, 0, idx, out=got.view(-1, channels))
                    pooled[m] = _reduce_axis(got.view(g, 4, m * m, channels), 1)
                else:
                    r = src // m
                    finer = pooled[src].view(g, m, r, src, channels)
                    finer = _reduce_axis(finer, 2).view(g, m * m, r, channels)
                    pooled[m] = _reduce_axis(finer, 2)
            # Transpose to channel-major in the maps' dtype (cheaper), then convert if needed.
            same = out.dtype == dtype
            target = out[start:stop] if same else self._buffer("out", g * dim, dtype, device)
            target = target.view(g, dim)
            for k, m in enumerate(levels):
                block = target[:, offsets[k] : offsets[k + 1]].view(g, channels, m * m)
                block.copy_(pooled[m].view(g, m * m, channels).transpose(1, 2))
            if not same:
                out[start:stop].copy_(target)
        return out


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


# ----------------------------------------------------------------------- whole-image SPP


def sliding_bins(a: int, n: int) -> int:
    """How many bins the paper's sliding form (window ceil(a/n), stride floor(a/n)) gives."""
    if a < n:
        return 0  # stride 0: the form is undefined
    return (a - math.ceil(a / n)) // (a // n) + 1


def sliding_agrees(a: int, n: int) -> bool:
    """Whether the sliding form's bins equal the Appendix A bins on a side of a cells."""
    if sliding_bins(a, n) != n:
        return False
    k, s = math.ceil(a / n), a // n
    return all((i * s, i * s + k) == ((i * a) // n, -((-(i + 1) * a) // n)) for i in range(n))


def image_spp(
    maps: torch.Tensor, pyramid: Sequence[int] = DEFAULT_PYRAMID, form: str = "bins"
) -> torch.Tensor:
    """Whole-map SPP for classification: [B, C, H, W] -> [B, C*sum(n^2)], differentiable.

    ``form="bins"`` (the default) uses the Appendix A bins, i.e. window SPP over the full map;
    ``adaptive_max_pool2d`` computes exactly these bins, for any map size. ``form="sliding"`` is
    the paper's section 2.3 description, max pooling with window ceil(a/n) and stride floor(a/n);
    it gives the same bins only for some sizes (13 with {1, 2, 3, 6}: the paper's 224 input), can
    give more or fewer than n bins (a=10, n=6 gives 9) and can miss the last cells (a=11, n=3), so
    it raises ValueError where it does not agree with the bins form.
    """
    levels = check_pyramid(pyramid)
    if form not in ("bins", "sliding"):
        raise ValueError(f"unknown SPP form {form!r}: choose 'bins' or 'sliding'")
    height, width = maps.shape[-2:]
    parts = []
    for n in levels:
        if form == "sliding":
            if not (sliding_agrees(height, n) and sliding_agrees(width, n)):
                raise ValueError(
                    f"the sliding SPP form is not the Appendix A binning for a {height}x{width} "
                    f"map at level {n}; use form='bins'"
                )
            kernel = (math.ceil(height / n), math.ceil(width / n))
            pooled = F.max_pool2d(maps, kernel, stride=(height // n, width // n))
        else:
            pooled = F.adaptive_max_pool2d(maps, n)
        parts.append(pooled.flatten(1))
    return torch.cat(parts, 1)


# --------------------------------------------------------------------------------- best scale


def window_areas(boxes: np.ndarray) -> np.ndarray:
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    return (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)


def _closest(distance: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """Per row the scale index of least distance; a tie goes to the smaller scale."""
    best = distance.min(1, keepdims=True)
    tied = np.where(np.isclose(distance, best, rtol=0, atol=1e-9), scales[None, :], np.inf)
    return tied.argmin(1).astype(np.int64)


def best_scale_released(
    boxes: np.ndarray, min_side: float, scales: Sequence[float], target_side: float = 13 * 16
) -> np.ndarray:
    """Released rule: expected = round(208 * min(H, W) / sqrt(area)); least |s - expected|.

    ``round`` is half away from zero, as in MATLAB and Lua (numpy's round is half to even).
    """
    scales = np.asarray(scales, np.float64)
    expected = np.floor(target_side * min_side / np.sqrt(window_areas(boxes)) + 0.5)
    return _closest(np.abs(scales[None, :] - expected[:, None]), scales)


def best_scale_area(
    boxes: np.ndarray, min_side: float, scales: Sequence[float], target: float = 224
) -> np.ndarray:
    """Paper rule: the scale whose scaled window pixel count is closest to 224 x 224."""
    scales = np.asarray(scales, np.float64)
    scaled = window_areas(boxes)[:, None] * (scales[None, :] / min_side) ** 2
    return _closest(np.abs(scaled - target * target), scales)


def best_scale(
    boxes: np.ndarray,
    min_side: float,
    scales: Sequence[float],
    rule: str = "released",
    area_target: float = 224,
    released_target_side: float = 13 * 16,
) -> np.ndarray:
    """Scale index per window [N] under RULE ("released" or "area224"), over SCALES (the
    effective scales of this image, in cache order)."""
    if rule == "released":
        return best_scale_released(boxes, min_side, scales, released_target_side)
    if rule == "area224":
        return best_scale_area(boxes, min_side, scales, area_target)
    raise ValueError(f"unknown scale rule {rule!r}; choose one of {SCALE_RULES}")
