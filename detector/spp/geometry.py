"""Window -> conv cells: where a window of the image lies on a trunk's conv map.

Boxes are 0-based pixel indices x1 y1 x2 y2, both ends inclusive (``sppdet.detector.data.records``);
cells are 0-based integer indices on a conv map, x1 y1 x2 y2, both ends inclusive.

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

Before mapping, a box is brought to the cached scale as the released code does it, in 1-based
pixels and in its order of operations: b_s = (b - 1)(s - 1)/(min(H, W) - 1) + 1, multiplied
before divided, then the offsets are subtracted (``spp_features_convX_to_poolX.m`` and
``spm_pool_caffe_mex.cpp``). s is the effective scale (the resized image's shorter side; see
``sppdet.detector.features.conv5`` for what ``--max-size`` does to it). The order matters for
integer boxes that land exactly on a cell boundary: a factor (s - 1)/(min(H, W) - 1) rounded
first can put them one ulp past it, and floor/ceil then pick the neighbouring cell.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

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


def edge_shift(rule: str, geometry: CellGeometry) -> float:
    """Pixels each window edge moves inward before projection, for a mapping RULE."""
    if rule == "released":
        return RELEASED_EDGE_SHIFT
    if rule == "paper":
        return geometry.stride / 2
    raise ValueError(f"unknown window mapping rule {rule!r}; choose one of {MAPPING_RULES}")


@dataclass(frozen=True)
class BoxScaling:
    """The released code's scaling of boxes to a cached scale, kept as the two factors it
    multiplies and divides by: b_s = (b - 1) * numerator / denominator + 1 (1-based pixels)."""

    numerator: np.ndarray  # s - 1, [N] or scalar
    denominator: float  # min(H, W) - 1


def scale_factor(effective_scale: np.ndarray | float, min_side: float) -> BoxScaling:
    """The released code's box scaling: (b - 1)(s - 1)/(min(H, W) - 1) + 1 in 1-based pixels."""
    return BoxScaling(np.asarray(effective_scale, np.float64) - 1, max(float(min_side) - 1, 1.0))


def _scaled_one_based(boxes: np.ndarray, factor: BoxScaling | np.ndarray | float) -> np.ndarray:
    """BOXES [N, 4] (0-based, so b - 1 of the 1-based box) scaled and made 1-based: multiplied
    by the numerator, then divided, then + 1, the released order (``BoxScaling``). A plain
    FACTOR (scalar or [N]) is a numerator over 1."""
    if not isinstance(factor, BoxScaling):
        factor = BoxScaling(np.asarray(factor, np.float64), 1.0)
    numerator = np.asarray(factor.numerator, np.float64).reshape(-1, 1)
    return np.asarray(boxes, np.float64).reshape(-1, 4) * numerator / factor.denominator + 1


def boxes_to_cells(
    boxes: np.ndarray,
    factor: BoxScaling | np.ndarray | float,
    geometry: CellGeometry,
    map_height: np.ndarray | int,
    map_width: np.ndarray | int,
    shift: float = RELEASED_EDGE_SHIFT,
) -> np.ndarray:
    """Windows in original-image pixels -> inclusive conv cells [N, 4] int64, inside the map.

    FACTOR scales each box to its cached scale (``scale_factor``, or a plain factor: scalar or
    [N]); MAP_HEIGHT/MAP_WIDTH are the conv map sizes at that scale (scalar or [N]). The
    arithmetic is the released mex's, in 1-based pixels and cells (offset0 = offset + 1), in its
    order of operations, so that exact cell boundaries round as there; cells come back 0-based.
    """
    b = _scaled_one_based(boxes, factor)
    offset0 = geometry.offset + 1  # the receptive-field centre of 1-based cell 1, 1-based
    lo = np.floor((b[:, :2] - offset0 + shift) / geometry.stride + 0.5)  # 1-based cell - 1
    hi = np.ceil((b[:, 2:] - offset0 - shift) / geometry.stride - 0.5)
    degenerate = lo > hi
    # The mex's C integer division of the 1-based cells, (l + r) / 2, truncates toward zero.
    middle = np.trunc((lo + hi + 2) / 2) - 1
    lo = np.where(degenerate, middle, lo)
    hi = np.where(degenerate, middle, hi)
    limit = np.stack(
        np.broadcast_arrays(np.asarray(map_width) - 1, np.asarray(map_height) - 1), -1
    ).reshape(-1, 2)
    lo = np.clip(lo, 0, limit)
    hi = np.clip(hi, 0, limit)
    return np.concatenate([lo, hi], 1).astype(np.int64)
