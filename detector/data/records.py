"""Dataset records: PASCAL VOC trees and COCO JSON, read into one in-memory record type.

Boxes are float32 [N, 4] x1 y1 x2 y2 in 0-based pixel indices, both ends inclusive (VOC's 1-based
annotation minus one). They become 1-based only when written to VOC results files.

Images are decoded by ``read_image`` alone, so every stage sees the same pixels: 8-bit RGB, three
channels (grey is replicated, alpha dropped, CMYK converted), with the EXIF orientation applied, as
a browser or an annotation tool shows the photo. The dataset's boxes are taken to refer to that
upright view.
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
