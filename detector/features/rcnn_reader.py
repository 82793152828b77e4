"""Reading the R-CNN pool5 store (``sppdet.detector.features.rcnn_writer``) with the interface of
``sppdet.detector.features.reader.FeatureCache`` that the training and test stages use
(``pooled``, ``image_info``, ``feature_keys``), so ``--features rcnn`` changes only where pool5
comes from. Only the stored windows, an image's proposals and ground-truth boxes, can be read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from sppdet.cache.shards import ShardedStore
from sppdet.cache.workdir import WorkDir
from sppdet.detector.backbones.trunk import trunk_spec
from sppdet.detector.core.errors import SppdetError
from sppdet.detector.features.rcnn_writer import KIND, MADE_BY, PER_SPLIT_PARAMS, STAGE
from sppdet.detector.spp.bins import pyramid_dim


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
