"""Geometry: split out of the former ``spp`` module."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from torch import nn

RELEASED_EDGE_SHIFT = 6.5  # pixels an edge moves inward before projection (released SPP_net code)


MAPPING_RULES = ("released", "paper")


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
