"""Tests of ``sppdet.detector.data.datasets``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sppdet.detector.core.errors import SppdetError
from sppdet.detector.data.datasets import load_dataset, parse_classes
from sppdet.detector.data.records import VOC_CLASSES
from tests.detector.data.shared import voc_tree


def test_voc_root_may_hold_a_voc2007_folder(tmp_path):
    voc_tree(tmp_path / "VOC2007")
    assert len(load_dataset(tmp_path, "test")) == 2


# ----------------------------------------------------------------------------- COCO


def coco_json(path: Path) -> Path:
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


def test_coco_reader(tmp_path):
    dataset = load_dataset(coco_json(tmp_path / "gt.json"), "ignored")
    assert dataset.classes == ("ant", "zebra")  # in category id order
    assert [r.image_id for r in dataset.records] == ["3", "7"]
    a = dataset.records[0]
    assert a.path == tmp_path / "a.jpg" and (a.width, a.height) == (60, 30)
    np.testing.assert_array_equal(a.boxes, [[2, 3, 11, 6], [0, 0, 59, 29]])  # inclusive ends
    assert a.labels.tolist() == [0, 1]
    assert a.difficult.tolist() == [False, True]  # iscrowd
    assert len(dataset.records[1].labels) == 0


# ----------------------------------------------------------------------------- classes


def test_parse_classes():
    assert parse_classes(None) is None
    assert parse_classes("voc") == VOC_CLASSES and len(VOC_CLASSES) == 20
    assert parse_classes("cat, dog horse") == ("cat", "dog", "horse")
    with pytest.raises(SppdetError, match="--classes is empty"):
        parse_classes(" , ")
