"""The R-CNN feature path, for the speed and accuracy comparison with SPP (paper section 4.2).

R-CNN (Girshick et al., 2014) computes a window's features by cropping the window from the image
with context, warping the crop to the network's input size and running the whole trunk on it:
one forward pass per window, where SPP runs the trunk once per image (and scale). Here both paths
use the same trunk, and everything after pool5 is shared: pool5 of a warped window is the
whole-map spatial pyramid pooling of its conv5 map (``spp.image_spp``, the Appendix A bins) with
the SPP cache's pyramid, so it has the SPP path's dimension and the same fc6-fc7 heads, SVMs and
box regressors apply unchanged. With the single level {6} it is R-CNN's fixed 6x6 pool5 grid.

Warping (R-CNN's ``rcnn_im_crop``, "warp" mode, padding p = 16): the window is enlarged about its
centre by ``size / (size - 2p)`` and rounded to whole pixels, so that once the enlarged region is
warped to ``size x size`` the window itself fills the central ``size - 2p`` pixels with p pixels of
context on each side. The region is sampled bilinearly without anti-aliasing, and what falls
outside the image is the mean pixel (0 after preprocessing). We sample every window of an image in
one batched ``roi_align`` call (aligned, one sample per output pixel: bilinear interpolation at
the output pixel centres). R-CNN instead resizes the in-image part to its rounded size and pads
the rest, so the two differ by at most one output pixel along the image border.

The store (kind ``rcnn-features``, WORK/rcnn-features/<split>): per image, ``boxes`` float32
[M, 4], the distinct windows of the image (its ground-truth boxes and its proposals), and
``pool5`` [M, D] float16; image attributes height and width. Its settings cover the trunk and
weights, the pyramid, the warp, the precision and the fingerprints of the proposals and of the
ground-truth boxes. ``RcnnCache`` reads it with the ``FeatureCache`` interface the training and
test stages use (``pooled``, ``image_info``, ``feature_keys``), so ``--features rcnn`` changes
only where pool5 comes from.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.ops import roi_align

from sppdet.cache.fingerprint import fingerprint
from sppdet.cache.shards import ShardedStore, ShardWriter
from sppdet.cache.workdir import WorkDir
from sppdet.detector.backbones.trunk import to_device, trunk_spec
from sppdet.detector.backbones.weights import Backbone, describe_weights, load_backbone
from sppdet.detector.core.config import (
    RCNN_WARP_SIZE,
    FeatureConfig,
    RcnnConfig,
    SppConfig,
    as_dict,
)
from sppdet.detector.core.device import autocast, check_precision, device_input, resolve_device
from sppdet.detector.core.errors import SppdetError
from sppdet.detector.core.progress import progress_bar
from sppdet.detector.data.images import read_image
from sppdet.detector.data.records import Dataset, ImageRecord
from sppdet.detector.spp.bins import check_pyramid, pyramid_dim
from sppdet.detector.spp.image_spp import image_spp
from sppdet.proposals.store import open_proposals

KIND = "rcnn-features"
MADE_BY = "sppdet cache-features --features rcnn"
STAGE = "cache-features-rcnn"  # its entry in settings.json
LAYOUT_VERSION = 1
DTYPES = {"float16": np.float16, "float32": np.float32}
PER_SPLIT_PARAMS = ("proposals", "ground_truth")  # which windows a store holds, not their values


# ------------------------------------------------------------------------------- warping


def warp_size(config: RcnnConfig, arch: str) -> int:
    return int(config.warp_size or RCNN_WARP_SIZE[arch])


def context_boxes(boxes: np.ndarray, size: int, padding: int) -> np.ndarray:
    """R-CNN's enlarged windows, float64 [N, 4] inclusive pixel indices (may leave the image).

    As ``rcnn_im_crop``: the half-sizes grow by size / (size - 2 * padding) about the centre
    x1 + w/2 (R-CNN's, half a pixel right of the window's own centre, kept for fidelity) and the
    corners are rounded half away from zero, as MATLAB's ``round``.
    """
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    scale = size / (size - 2.0 * padding)
    half = (b[:, 2:] - b[:, :2] + 1.0) / 2.0
    centre = b[:, :2] + half
    corners = np.concatenate([centre - half * scale, centre + half * scale], axis=1)
    return np.sign(corners) * np.floor(np.abs(corners) + 0.5)


def warp_windows(image: torch.Tensor, boxes: np.ndarray, size: int, padding: int) -> torch.Tensor:
    """Warped windows [N, 3, size, size] of a preprocessed image [1, 3, H, W] (its device).

    Output pixel (i, j) of window k samples the enlarged window at its pixel centre bilinearly;
    samples more than a pixel outside the image are 0 (the mean, after preprocessing).
    """
    enlarged = context_boxes(boxes, size, padding)
    rois = np.zeros((len(enlarged), 5), np.float32)
    rois[:, 1:3] = enlarged[:, :2]
    rois[:, 3:5] = enlarged[:, 2:] + 1.0  # inclusive indices -> continuous pixel edges
    rois_t = torch.from_numpy(rois).to(image.device, image.dtype)
    return roi_align(image, rois_t, (size, size), spatial_scale=1.0, sampling_ratio=1, aligned=True)


# ------------------------------------------------------------------------------- features


class RcnnFeaturizer:
    """pool5 of windows the R-CNN way: warp, run the trunk per window (batched), pool the map."""

    def __init__(
        self,
        backbone: Backbone,
        pyramid: Sequence[int],
        config: RcnnConfig,
        device: torch.device,
    ) -> None:
        check_precision(config.precision)  # before any work, not at the first batch
        self.preprocessing = backbone.preprocessing
        self.trunk = to_device(backbone.trunk, device)
        self.pyramid = check_pyramid(pyramid)
        self.config = config
        self.device = device
        self.size = warp_size(config, backbone.arch)
        self.dim = pyramid_dim(self.pyramid, backbone.channels)

    def prepare(self, image: np.ndarray) -> torch.Tensor:
        """uint8 RGB [H, W, 3] -> the preprocessed image [1, 3, H, W] on the device."""
        return self.preprocessing(image, self.device)

    def pool5(self, image: torch.Tensor, boxes: np.ndarray) -> torch.Tensor:
        """pool5 [N, D] float32 (on the device) of BOXES in a prepared image."""
        out = torch.empty((len(boxes), self.dim), dtype=torch.float32, device=self.device)
        step = max(1, self.config.batch_windows)
        with torch.inference_mode(), autocast(self.device, self.config.precision):
            for start in range(0, len(boxes), step):
                crops = warp_windows(
                    image, boxes[start : start + step], self.size, self.config.context_padding
                )
                conv5 = self.trunk(device_input(crops))
                out[start : start + len(crops)] = image_spp(conv5, self.pyramid)
        return out


def image_windows_union(record: ImageRecord, proposals: np.ndarray) -> np.ndarray:
    """The distinct windows whose features an image needs: its ground-truth boxes and proposals,
    float32 [M, 4], in a canonical (sorted) order."""
    boxes = np.concatenate([record.boxes.reshape(-1, 4), proposals.reshape(-1, 4)])
    return np.unique(boxes.astype(np.float32), axis=0)


# ----------------------------------------------------------------------------------- store


def rcnn_params(
    features: FeatureConfig,
    spp: SppConfig,
    config: RcnnConfig,
    proposals_fingerprint: str,
    dataset: Dataset,
) -> dict[str, Any]:
    """The settings that define an R-CNN feature store's content (its fingerprint); checked, so
    that a store is never created with settings the featurizer would refuse."""
    check_precision(config.precision)
    if config.dtype not in DTYPES:
        raise SppdetError(f"--dtype {config.dtype!r}: choose float16 or float32")
    if config.context_padding < 0 or 2 * config.context_padding >= warp_size(
        config, features.backbone
    ):
        raise SppdetError(
            f"--context-padding {config.context_padding}: must be >= 0 and below half the warp"
        )
    weights_id, pre = describe_weights(features.backbone, features.weights)
    gt = {r.image_id: r.boxes.astype(np.float32).ravel().tolist() for r in dataset.records}
    return {
        "layout": LAYOUT_VERSION,
        "backbone": features.backbone,
        "weights": weights_id,
        "preprocessing": pre.to_dict(),
        "pyramid": list(check_pyramid(spp.pyramid)),
        "warp_size": warp_size(config, features.backbone),
        "context_padding": int(config.context_padding),
        "precision": config.precision,
        "dtype": config.dtype,
        "proposals": proposals_fingerprint,
        "ground_truth": fingerprint(gt),
    }


@dataclass
class RcnnStats:
    root: Path
    images: int
    computed: int
    windows: int = 0
    seconds: float = 0.0


def cache_rcnn_features(
    dataset: Dataset,
    work: WorkDir | str | Path,
    features: FeatureConfig,
    spp: SppConfig,
    config: RcnnConfig,
    force: bool = False,
    progress: bool = True,
) -> RcnnStats:
    """Build (or resume) the R-CNN pool5 store of DATASET's split: every proposal and every
    ground-truth box of every image, warped and run through the trunk."""
    work = work if isinstance(work, WorkDir) else WorkDir.at(work)
    proposals = open_proposals(work, dataset.split)
    params = rcnn_params(features, spp, config, proposals.fingerprint, dataset)
    ids = [r.image_id for r in dataset.records]
    root = work.rcnn_features(dataset.split)
    store = ShardedStore.create(root, KIND, params, ids, config.shard_size, force=force)
    work.record_stage(
        f"{STAGE}:{dataset.split}",
        {
            "features": as_dict(features),
            "spp": as_dict(spp),
            "rcnn": as_dict(config),
            "store": params,
        },
    )
    pending = store.pending_shards()
    by_id = dataset.by_id()
    stats = RcnnStats(root, len(ids), sum(len(store.shard_image_ids(k)) for k in pending))
    if pending:
        device = resolve_device(features.device)
        featurizer = RcnnFeaturizer(
            load_backbone(features.backbone, features.weights), spp.pyramid, config, device
        )
        start = time.perf_counter()
        bars = progress_bar(stats.computed, "cache-features rcnn", "img") if progress else None
        with bars or nullcontext() as bar:

            def fill(writer: ShardWriter, image_ids: list[str]) -> None:
                for image_id in image_ids:
                    record = by_id[image_id]
                    boxes = image_windows_union(record, proposals.boxes(image_id))
                    image = read_image(record.path)
                    pool5 = featurizer.pool5(featurizer.prepare(image), boxes).cpu().numpy()
                    writer.put(image_id, "boxes", boxes)
                    writer.put(image_id, "pool5", pool5.astype(DTYPES[config.dtype]), "gzip")
                    writer.set_image_attrs(image_id, height=image.shape[0], width=image.shape[1])
                    stats.windows += len(boxes)
                    if bar is not None:
                        bar.advance()
                        rate = stats.windows / max(time.perf_counter() - start, 1e-9)
                        bar.note(f"cache-features rcnn ({rate:.0f} windows/s)")

            for shard in pending:
                store.write_shard(shard, fill)
        stats.seconds = time.perf_counter() - start
    store.close()
    proposals.close()
    return stats


# ------------------------------------------------------------------------------------ read


@dataclass(frozen=True)
class ImageSize:
    height: int
    width: int


class RcnnCache:
    """Read access to one split's R-CNN pool5 store, with the ``FeatureCache`` interface that
    training and detection use: ``pooled(image_id, boxes)`` returns the stored pool5 rows of
    exactly these windows (each must be a proposal or a ground-truth box of the image)."""

    source = "rcnn"
    stage = STAGE
    made_by = MADE_BY

    def __init__(self, store: ShardedStore) -> None:
        self.store = store
        self.params: dict[str, Any] = store.meta.params
        self.arch: str = self.params["backbone"]
        self.pyramid: tuple[int, ...] = tuple(self.params["pyramid"])
        self._loaded: tuple[str, np.ndarray, np.ndarray] | None = None
        self.dim = pyramid_dim(self.pyramid, trunk_spec(self.arch)[0])

    @classmethod
    def open(cls, work: WorkDir, split: str) -> RcnnCache:
        root = work.rcnn_features(split)
        return cls(ShardedStore.open(root, KIND, made_by=f"{MADE_BY} --split {split}"))

    @property
    def image_ids(self) -> list[str]:
        return self.store.meta.image_ids

    @property
    def fingerprint(self) -> str:
        return self.store.meta.fingerprint

    @property
    def settings(self) -> dict[str, Any]:
        """What decides the features of a window, whatever the split: the params less the
        split's proposals and ground truth (they only decide which windows are stored)."""
        return {k: v for k, v in self.params.items() if k not in PER_SPLIT_PARAMS}

    def image_info(self, image_id: str) -> ImageSize:
        attrs = self.store.image_attrs(image_id)
        return ImageSize(int(attrs["height"]), int(attrs["width"]))

    def _image(self, image_id: str) -> tuple[np.ndarray, np.ndarray]:
        if self._loaded is None or self._loaded[0] != image_id:
            boxes = self.store.get(image_id, "boxes")
            self._loaded = (image_id, boxes, self.store.get(image_id, "pool5"))
        return self._loaded[1], self._loaded[2]

    def rows(self, image_id: str, boxes: np.ndarray) -> np.ndarray:
        """Row of each window of BOXES in the image's stored windows."""
        stored, _ = self._image(image_id)
        query = np.asarray(boxes, np.float32).reshape(-1, 4)
        keys, inverse = np.unique(np.concatenate([stored, query]), axis=0, return_inverse=True)
        inverse = inverse.reshape(-1)
        row_of_key = np.full(len(keys), -1, np.int64)
        row_of_key[inverse[: len(stored)]] = np.arange(len(stored))
        rows = row_of_key[inverse[len(stored) :]]
        if (rows < 0).any():
            missing = query[np.argmax(rows < 0)].tolist()
            raise SppdetError(
                f"{self.store.root}: window {missing} of image {image_id!r} has no R-CNN "
                "features (only proposals and ground-truth boxes are cached)"
            )
        return rows

    def pooled(self, image_id: str, boxes: np.ndarray) -> torch.Tensor:
        """pool5 [N, D] float32 of BOXES (original-image pixels)."""
        _, pool5 = self._image(image_id)
        return torch.from_numpy(pool5[self.rows(image_id, boxes)].astype(np.float32))

    def feature_keys(self, image_id: str, boxes: np.ndarray) -> np.ndarray:
        """Windows with equal keys have equal features: for R-CNN only identical boxes do."""
        return np.asarray(boxes, np.float32).reshape(-1, 4)

    def close(self) -> None:
        self.store.close()
