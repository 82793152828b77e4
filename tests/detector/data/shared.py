"""Shared helpers of the tests in this folder."""

from __future__ import annotations

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
