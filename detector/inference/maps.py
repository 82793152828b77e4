"""One image's conv5 maps in memory, and the SPP features of its windows pooled from them.

The maps are what ``cache-features`` would store for the image: resized to every trained scale
and run through the trunk by ``features.conv5`` (same resizing, size cap and precision), cast to
the cache's dtype (float16 by default), so that pooling them gives the features the ``detect``
stage reads from its cache, bit for bit. Windows are assigned their best scale and mapped to
conv5 cells by ``features.reader.ImageInfo`` and pooled by ``spp.WindowPooler``, as the cache's
``FeatureCache.pooled`` does, on the device the maps are on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from sppdet.detector.backbones.preprocessing import Preprocessing
from sppdet.detector.backbones.trunk import Trunk
from sppdet.detector.core.config import SppConfig
from sppdet.detector.features.conv5 import compute_conv5, resize_to_scales
from sppdet.detector.features.reader import TORCH_DTYPES, ImageInfo
from sppdet.detector.spp.bins import check_pyramid, pyramid_dim
from sppdet.detector.spp.geometry import CellGeometry, edge_shift
from sppdet.detector.spp.pooler import WindowPooler


@dataclass(frozen=True)
class MapSettings:
    """How a model's conv5 maps are made and read: the settings its feature cache had."""

    scales: tuple[int, ...]
    max_size: int | None
    dtype: str  # the cache's: float16 | float32
    precision: str  # the trunk's autocast: fp32 | bf16 | fp16
    channels: int
    geometry: CellGeometry
    spp: SppConfig

    @property
    def pyramid(self) -> tuple[int, ...]:
        return check_pyramid(self.spp.pyramid)

    @property
    def dim(self) -> int:
        return pyramid_dim(self.pyramid, self.channels)


class ImageMaps:
    """The conv5 maps of one RGB image at every scale, on the trunk's device, ready to pool."""

    def __init__(
        self,
        rgb: np.ndarray,
        trunk: Trunk,
        preprocessing: Preprocessing,
        settings: MapSettings,
        device: torch.device,
        pooler: WindowPooler,
    ) -> None:
        resized = resize_to_scales(rgb, settings.scales, settings.max_size)
        dtype = TORCH_DTYPES[settings.dtype]
        maps = compute_conv5(
            trunk, preprocessing, resized, device, False, dtype, settings.precision
        )
        self.maps = [m.to(device) for _, m in maps]  # compute_conv5 hands them over on the CPU
        self.info = ImageInfo(
            rgb.shape[0],
            rgb.shape[1],
            np.array([min(r.shape[:2]) for r in resized], np.int64),
            np.array([m.shape[1] for m in self.maps], np.int64),
            np.array([m.shape[2] for m in self.maps], np.int64),
        )
        self.settings = settings
        self.shift = edge_shift(settings.spp.window_mapping, settings.geometry)
        self.device = device
        self.pooler = pooler

    def pooled(self, boxes: np.ndarray) -> torch.Tensor:
        """SPP features [N, dim] float32 of windows BOXES (image pixels) at their best scale."""
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        out = self.pooler.new_result(len(boxes), self.settings.dim, torch.float32, self.device)
        if len(boxes) == 0:
            return out
        scales = self.info.best_scale(boxes, self.settings.spp)
        cells = self.info.cells(boxes, scales, self.settings.geometry, self.shift)
        needed = np.unique(scales)  # pool from the maps some window uses
        maps = [self.maps[int(k)] for k in needed]
        which = np.searchsorted(needed, scales)
        return self.pooler.pool(maps, cells, self.settings.pyramid, map_index=which, out=out)
