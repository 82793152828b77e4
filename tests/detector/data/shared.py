"""Shared helpers of the tests in this folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from sppdet.detector.data.synthetic import SyntheticObject, write_voc_image, write_voc_split

GOOD_OBJECTS = [
    SyntheticObject("dog", (10, 10, 59, 49)),
    SyntheticObject("cat", (0, 0, 119, 99), difficult=True),  # the whole 120x100 image
]


def voc_tree(root: Path, ids=("000001", "000002"), objects=GOOD_OBJECTS) -> Path:
    for image_id in ids:
        write_voc_image(root, image_id, np.zeros((100, 120, 3), np.uint8), objects)
    write_voc_split(root, "test", list(ids))
    return root


def coco_json(path: Path) -> Path:
    """Two images (ids out of order) and two categories (ids out of name order); one crowd."""
    path.write_text(
        json.dumps(
            {
                "images": [
                    {"id": 7, "file_name": "b.jpg", "width": 50, "height": 40},
                    {"id": 3, "file_name": "a.jpg", "width": 60, "height": 30},
                ],
                "annotations": [
                    {"id": 1, "image_id": 3, "category_id": 5, "bbox": [2, 3, 10, 4],
                     "area": 40, "iscrowd": 0},
                    {"id": 2, "image_id": 3, "category_id": 9, "bbox": [0, 0, 60, 30],
                     "area": 1800, "iscrowd": 1},
                ],
                "categories": [{"id": 9, "name": "zebra"}, {"id": 5, "name": "ant"}],
            }
        )
    )  # fmt: skip
    return path
