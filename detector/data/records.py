"""Dataset records: one in-memory type for the images and ground truth of a split, whatever its
format (``voc``, ``coco``).

Boxes are float32 [N, 4] x1 y1 x2 y2 in 0-based pixel indices, both ends inclusive (VOC's 1-based
annotation minus one). They become 1-based only when written to VOC results files. The boxes refer
to the upright view of the image that ``sppdet.detector.data.images.read_image`` decodes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)  # fmt: skip


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".JPG", ".JPEG", ".PNG")


@dataclass
class ImageRecord:
    image_id: str
    path: Path
    width: int
    height: int
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    difficult: np.ndarray = field(default_factory=lambda: np.zeros((0,), bool))


@dataclass
class Dataset:
    """The records of one split, with the class names their labels index."""

    name: str
    split: str
    classes: tuple[str, ...]
    records: list[ImageRecord]

    def __len__(self) -> int:
        return len(self.records)

    def by_id(self) -> dict[str, ImageRecord]:
        return {r.image_id: r for r in self.records}
