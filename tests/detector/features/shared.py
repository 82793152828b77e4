"""Shared helpers of the tests in this folder."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from sppdet.detector.core.config import FeatureConfig

# (height, width) of the test images; the last one is a panorama that hits a 300 px cap.
SIZES = [(60, 80), (90, 70), (64, 64), (40, 200), (75, 100)]


def make_tiny_voc(root: Path, sizes=SIZES, split: str = "trainval") -> Path:
    """A VOC tree with random PNG images (lossless) and one box each."""
    rng = np.random.default_rng(0)
    for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    ids = []
    for i, (h, w) in enumerate(sizes):
        image_id = f"im{i:02d}"
        ids.append(image_id)
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        cv2.imwrite(str(root / "JPEGImages" / f"{image_id}.png"), image)
        (root / "Annotations" / f"{image_id}.xml").write_text(
            f"<annotation><filename>{image_id}.png</filename><size><width>{w}</width>"
            f"<height>{h}</height><depth>3</depth></size><object><name>thing</name>"
            f"<difficult>0</difficult><bndbox><xmin>2</xmin><ymin>3</ymin>"
            f"<xmax>{w - 4}</xmax><ymax>{h - 5}</ymax></bndbox></object></annotation>"
        )
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root


CONFIG = FeatureConfig(scales=(100, 160), max_size=300, flip=True, shard_size=2, device="cpu")
