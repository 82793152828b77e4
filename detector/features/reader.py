"""Pooled window features from the conv5 cache: the API fine-tuning, SVMs, bbox regression and
detection use.

    cache = FeatureCache.open(work, "trainval", expect=feature_config)   # refuses a stale cache
    x = cache.pooled(image_id, boxes)            # [N, C*sum(n^2)] at each window's best scale
    x = cache.pooled(image_id, boxes, scales=2)  # all at scale index 2
    x = cache.pooled(image_id, boxes, scales=rng.integers(0, cache.num_scales, len(boxes)),
                     flipped=True)               # the mirrored windows of the mirrored image

Boxes are original-image pixels (0-based, inclusive). With ``flipped=True`` the box is mirrored
(x -> W-1-x) and pooled from the cached map of the mirrored image, i.e. the feature of the same
object seen in the flipped image. Only the maps of the scales a call needs are read, one image at
a time (the last image's maps stay in memory), so the cache never has to fit in RAM.

Devices: ``FeatureCache.open(..., device=...)`` (or ``cache.to(device)``) keeps the maps it holds
on that device, moved there once per map, and pools there: the compiled kernel on the CPU,
``WindowPooler``'s torch path on a GPU. A reader thread may prefetch: ``read_maps`` (host copies
straight from the store, thread-safe) then ``hold_maps`` on the computing thread.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sppdet.cache.shards import ShardedStore
from sppdet.cache.workdir import WorkDir
from sppdet.detector.core.config import FeatureConfig, SppConfig, section_from_dict
from sppdet.detector.core.errors import SppdetError
from sppdet.detector.features.conv5 import conv5_name
from sppdet.detector.features.writer import KIND, MADE_BY, STAGE, feature_params
from sppdet.detector.spp.bins import check_pyramid, pyramid_dim
from sppdet.detector.spp.geometry import CellGeometry, boxes_to_cells, edge_shift, scale_factor
from sppdet.detector.spp.pooler import WindowPooler
from sppdet.detector.spp.scales import best_scale

TORCH_DTYPES = {"float16": torch.float16, "float32": torch.float32}

MapKey = tuple[str, int, bool]  # (image id, scale index, flipped): one cached conv5 map


@dataclass(frozen=True)
class ImageInfo:
    """Sizes of one cached image: the decoded image, and per scale the resized shorter side
    (effective scale) and the conv map."""

    height: int
    width: int
    effective_scales: np.ndarray  # [S] int64
    map_heights: np.ndarray  # [S]
    map_widths: np.ndarray  # [S]

    @property
    def min_side(self) -> int:
        return min(self.height, self.width)

    def best_scale(self, boxes: np.ndarray, spp: SppConfig) -> np.ndarray:
        """Scale index [N] of each window under SPP's scale rule."""
        return best_scale(
            boxes,
            self.min_side,
            self.effective_scales,
            spp.scale_rule,
            spp.area_target,
            spp.released_target_side,
        )

    def cells(
        self, boxes: np.ndarray, scales: np.ndarray, geometry: CellGeometry, shift: float
    ) -> np.ndarray:
        """Inclusive conv5 cells [N, 4] of windows BOXES (image pixels) at scale indices SCALES."""
        return boxes_to_cells(
            np.asarray(boxes, np.float64).reshape(-1, 4),
            scale_factor(self.effective_scales[scales], self.min_side),
            geometry,
            self.map_heights[scales],
            self.map_widths[scales],
            shift,
        )


def spp_settings(work: WorkDir, split: str) -> SppConfig:
    """The SPP settings recorded by ``cache-features`` for SPLIT, else the defaults."""
    recorded = work.recorded(STAGE, split) or {}
    spp = recorded.get("spp")
    if not spp:
        return SppConfig()
    where = f"{work.settings_path} ({STAGE} on {split})"
    fix = f"rerun `sppdet {STAGE} --split {split} --force` with this version of sppdet"
    return section_from_dict(SppConfig, spp, where, fix)


class FeatureCache:
    """Read access to one split's conv5 cache, with SPP pooling of windows."""

    source = "spp"  # the kind of features (``rcnn_reader.RcnnCache`` is "rcnn")
    stage = STAGE  # its entry in settings.json
    made_by = MADE_BY  # the command that builds it

    def __init__(
        self,
        store: ShardedStore,
        spp: SppConfig,
        cached_images: int = 1,
        device: torch.device | str = "cpu",
    ) -> None:
        self.store = store
        self.device = torch.device(device)
        self.spp = spp
        params = store.meta.params
        self.params: dict[str, Any] = params
        self.arch: str = params["backbone"]
        self.scales: tuple[int, ...] = tuple(params["scales"])
        self.num_scales = len(self.scales)
        self.has_flip = bool(params["flip"])
        self.channels = int(params["channels"])
        self.dtype = TORCH_DTYPES[params["dtype"]]
        geometry = params["geometry"]
        self.geometry = CellGeometry(
            int(geometry["stride"]), float(geometry["offset"]), int(geometry["receptive_field"])
        )
        self.pyramid = check_pyramid(spp.pyramid)
        self.dim = pyramid_dim(self.pyramid, self.channels)
        self.shift = edge_shift(spp.window_mapping, self.geometry)
        self._pooler = WindowPooler()
        self._maps: dict[MapKey, torch.Tensor] = {}  # on self.device
        self._info: dict[str, ImageInfo] = {}
        self._cached_images = cached_images
        self._store_lock = threading.Lock()  # a prefetching thread reads the store too

    @classmethod
    def open(
        cls,
        work: WorkDir | str | Path,
        split: str,
        expect: FeatureConfig | None = None,
        spp: SppConfig | None = None,
        device: torch.device | str = "cpu",
    ) -> FeatureCache:
        """Open WORK's cache of SPLIT. With EXPECT, a cache made with other settings (backbone,
        weights, preprocessing, scales, max size, dtype, flip) is refused with the differences.
        SPP defaults to the settings ``cache-features`` recorded (pyramid, scale rule, mapping).
        Maps are held and pooled on DEVICE.
        """
        work = work if isinstance(work, WorkDir) else WorkDir.at(work)
        expected = feature_params(expect) if expect is not None else None
        store = ShardedStore.open(work.features(split), KIND, MADE_BY, expect_params=expected)
        spp = spp if spp is not None else spp_settings(work, split)
        return cls(store, spp, device=device)

    def to(self, device: torch.device | str) -> FeatureCache:
        """Hold and pool on DEVICE from now on (the maps held so far move there); returns self."""
        self.device = torch.device(device)
        self._maps = {key: value.to(self.device) for key, value in self._maps.items()}
        return self

    @property
    def image_ids(self) -> list[str]:
        return list(self.store.meta.image_ids)

    @property
    def fingerprint(self) -> str:
        return self.store.meta.fingerprint

    @property
    def settings(self) -> dict[str, Any]:
        """What decides the features of a window, whatever the split: the store's params."""
        return self.params

    def image_info(self, image_id: str) -> ImageInfo:
        info = self._info.get(image_id)
        if info is None:
            with self._store_lock:
                attrs = self.store.image_attrs(image_id)
            info = ImageInfo(
                int(attrs["height"]),
                int(attrs["width"]),
                np.asarray(attrs["effective_scales"], np.int64),
                np.asarray(attrs["map_heights"], np.int64),
                np.asarray(attrs["map_widths"], np.int64),
            )
            self._info[image_id] = info
        return info

    def keep_images(self, count: int) -> None:
        """Keep the conv5 maps of the last COUNT images read in memory (default 1), e.g. the
        images of a fine-tuning round, so that revisiting them does not re-read the cache."""
        self._cached_images = max(1, int(count))

    def conv5(self, image_id: str, scale_index: int, flipped: bool = False) -> torch.Tensor:
        """The cached conv5 map [C, h, w] (stored dtype, on the device) of one image at one
        scale; read from the store unless held (``hold_maps``)."""
        key = (image_id, int(scale_index), bool(flipped))
        found = self._maps.get(key)
        if found is None:
            self.hold_maps(self.read_maps(image_id, [(key[1], key[2])]))
            found = self._maps[key]
        return found

    def read_maps(
        self, image_id: str, wanted: Iterable[tuple[int, bool]]
    ) -> dict[MapKey, torch.Tensor]:
        """Host copies of IMAGE_ID's maps WANTED ((scale index, flipped) pairs) from the store,
        except those already held. Safe on a reader thread (``training.prefetch``)."""
        out = {}
        for scale_index, flipped in wanted:
            key = (image_id, int(scale_index), bool(flipped))
            if key in self._maps or key in out:
                continue
            self._check_map(key[1], key[2])
            with self._store_lock:
                data = self.store.get(image_id, conv5_name(key[1], key[2]))
            out[key] = torch.from_numpy(data)
        return out

    def hold_maps(self, maps: dict[MapKey, torch.Tensor]) -> None:
        """Keep MAPS (from ``read_maps``) on the device, moved there once; the maps of images
        older than the last ``keep_images`` go."""
        for key, value in maps.items():
            images = list(dict.fromkeys(k[0] for k in self._maps))
            if key[0] not in images:  # keep the maps of the last few images only
                for old in images[: max(0, len(images) - self._cached_images + 1)]:
                    for stale in [k for k in self._maps if k[0] == old]:
                        del self._maps[stale]
            self._maps[key] = value.to(self.device)

    def _check_map(self, scale_index: int, flipped: bool) -> None:
        if not 0 <= scale_index < self.num_scales:
            raise IndexError(f"scale index {scale_index} outside 0..{self.num_scales - 1}")
        if flipped and not self.has_flip:
            raise SppdetError(
                f"{self.store.root}: the cache holds no flipped maps; rebuild it with "
                "`sppdet cache-features --flip`"
            )

    def best_scale(self, image_id: str, boxes: np.ndarray) -> np.ndarray:
        """Scale index [N] of each window under the configured rule (spp.scale_rule)."""
        return self.image_info(image_id).best_scale(boxes, self.spp)

    def scale_indices(
        self, image_id: str, boxes: np.ndarray, scales: int | Sequence[int] | np.ndarray | None
    ) -> np.ndarray:
        """SCALES resolved to one index per window: None = best scale, int = that scale."""
        n = len(boxes)
        if scales is None:
            return self.best_scale(image_id, boxes)
        index = np.asarray(scales, np.int64)
        index = np.full(n, int(index), np.int64) if index.ndim == 0 else index.reshape(-1)
        if index.shape != (n,):
            raise ValueError(f"{index.shape[0]} scale indices for {n} windows")
        if n and (index.min() < 0 or index.max() >= self.num_scales):
            raise IndexError(f"scale indices must lie in 0..{self.num_scales - 1}")
        return index

    def cells(
        self,
        image_id: str,
        boxes: np.ndarray,
        scales: np.ndarray,
        flipped: bool = False,
    ) -> np.ndarray:
        """Inclusive conv5 cells [N, 4] of windows BOXES at scale indices SCALES [N]."""
        info = self.image_info(image_id)
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        if flipped:
            boxes = np.stack(
                [
                    info.width - 1 - boxes[:, 2],
                    boxes[:, 1],
                    info.width - 1 - boxes[:, 0],
                    boxes[:, 3],
                ],
                1,
            )
        return info.cells(boxes, scales, self.geometry, self.shift)

    def feature_keys(self, image_id: str, boxes: np.ndarray) -> np.ndarray:
        """[N, 5] (best scale, conv5 cells) of each window: equal keys mean equal features."""
        scales = self.best_scale(image_id, boxes)
        return np.concatenate([scales[:, None], self.cells(image_id, boxes, scales)], axis=1)

    def pooled(
        self,
        image_id: str,
        boxes: np.ndarray,
        scales: int | Sequence[int] | np.ndarray | None = None,
        flipped: bool = False,
        dtype: torch.dtype = torch.float32,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """SPP features [N, C*sum(n^2)] of windows BOXES (original-image pixels) of one image.

        SCALES: None = each window's best scale (spp.scale_rule), an int = that scale index for
        all, or one index per window. All windows are pooled in one vectorised pass over the
        maps of the scales they use. OUT, an [>=N, dim] tensor, receives the result (reusing it
        across images saves the allocation of a large result).
        """
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        n = len(boxes)
        if out is None:
            out = self._pooler.new_result(n, self.dim, dtype, self.device)
        elif out.shape[0] < n or out.shape[1] != self.dim:
            raise ValueError(f"out must be [>= {n}, {self.dim}], got {tuple(out.shape)}")
        out = out[:n]
        if n == 0:
            return out
        index = self.scale_indices(image_id, boxes, scales)
        cells = self.cells(image_id, boxes, index, flipped)
        needed = np.unique(index)  # read only the scales some window uses
        maps = [self.conv5(image_id, int(k), flipped) for k in needed]
        which = np.searchsorted(needed, index)
        return self._pooler.pool(maps, cells, self.pyramid, map_index=which, out=out)

    def close(self) -> None:
        self._maps.clear()
        self.store.close()

    def __enter__(self) -> FeatureCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class CacheInfo:
    """What ``sppdet cache-info`` shows of a split's conv5 cache, complete or not."""

    path: Path
    images: int
    images_cached: int  # images in the shards written so far
    shards_done: int
    shards_total: int
    backbone: str
    weights: str  # the weights' identity, as fingerprinted
    scales: list[int]
    max_size: int | None
    dtype: str
    flip: bool
    preprocessing: dict[str, Any]
    bytes_total: int
    fingerprint: str

    @property
    def bytes_per_image(self) -> float:
        return self.bytes_total / self.images_cached if self.images_cached else 0.0

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``cache-info --json``)."""
        return {
            "path": str(self.path),
            "images": self.images,
            "images_cached": self.images_cached,
            "shards": f"{self.shards_done}/{self.shards_total}",
            "backbone": self.backbone,
            "weights": self.weights,
            "scales": self.scales,
            "max_size": self.max_size,
            "dtype": self.dtype,
            "flip": self.flip,
            "preprocessing": self.preprocessing,
            "bytes_total": self.bytes_total,
            "bytes_per_image": self.bytes_per_image,
            "fingerprint": self.fingerprint,
        }


def cache_info(work: WorkDir | str | Path, split: str) -> CacheInfo:
    """Images, scales, sizes and the fingerprint of WORK's conv5 cache of SPLIT."""
    work = work if isinstance(work, WorkDir) else WorkDir.at(work)
    store = ShardedStore.open(work.features(split), KIND, MADE_BY, require_complete=False)
    with store:
        pending = set(store.pending_shards())  # no record, or no file of the recorded size
        done = [k for k in range(store.num_shards) if k not in pending]
        params = store.meta.params
        return CacheInfo(
            path=store.root,
            images=len(store),
            images_cached=sum(len(store.shard_image_ids(k)) for k in done),
            shards_done=len(done),
            shards_total=store.num_shards,
            backbone=params["backbone"],
            weights=params["weights"],
            scales=params["scales"],
            max_size=params["max_size"],
            dtype=params["dtype"],
            flip=params["flip"],
            preprocessing=params["preprocessing"],
            bytes_total=store.total_bytes(),
            fingerprint=store.meta.fingerprint,
        )
