"""Shared helpers of the tests in this folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sppdet.detector.data.synthetic import SyntheticObject, write_voc_image, write_voc_split
from sppdet.detector.evaluation.voc import ClassDetections


def dets(rows: list[tuple]) -> ClassDetections:
    """ROWS: (image_id, score, (x1, y1, x2, y2) 0-based) in file order."""
    if not rows:
        return ClassDetections.empty()
    return ClassDetections([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows])


GT = (0, 0, 9, 9)  # 10 x 10 = 100 pixels with the +1 convention


# ----------------------------------------------------------------------------- VOC tree + COCO


def write_tree(root: Path) -> Path:
    """Two images, classes cat/dog, one difficult dog; split 'test' lists both."""
    cat, dog = "cat", "dog"
    objects = {
        "000001": [SyntheticObject(cat, (10, 10, 59, 49)), SyntheticObject(dog, (5, 60, 25, 90))],
        "000002": [
            SyntheticObject(dog, (30, 20, 99, 79)),
            SyntheticObject(dog, (0, 0, 9, 9), True),
        ],
    }
    for image_id, objs in objects.items():
        write_voc_image(root, image_id, np.zeros((100, 120, 3), np.uint8), objs)
    write_voc_split(root, "test", list(objects))
    return root
