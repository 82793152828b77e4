"""Tests of ``sppdet.detector.data.datasets``: the reader ``--data`` selects, and ``--classes``."""

from __future__ import annotations

import pytest

from sppdet.detector.core.errors import SppdetError
from sppdet.detector.data.coco import load_coco
from sppdet.detector.data.datasets import load_dataset, parse_classes
from sppdet.detector.data.records import VOC_CLASSES
from tests.detector.data.shared import coco_json, voc_tree


def test_voc_root_may_hold_a_voc2007_folder(tmp_path):
    voc_tree(tmp_path / "VOC2007")
    assert len(load_dataset(tmp_path, "test")) == 2


def test_a_json_file_is_read_as_coco_and_a_missing_path_is_refused(tmp_path):
    gt = coco_json(tmp_path / "gt.json")
    via = load_dataset(gt, "ignored")
    direct = load_coco(gt)
    assert (via.name, via.classes) == (direct.name, direct.classes) == ("gt", ("ant", "zebra"))
    assert [r.image_id for r in via.records] == [r.image_id for r in direct.records]
    with pytest.raises(SppdetError, match="dataset not found"):
        load_dataset(tmp_path / "nowhere", "test")


def test_parse_classes():
    assert parse_classes(None) is None
    assert parse_classes("voc") == VOC_CLASSES and len(VOC_CLASSES) == 20
    assert parse_classes("cat, dog horse") == ("cat", "dog", "horse")
    with pytest.raises(SppdetError, match="--classes is empty"):
        parse_classes(" , ")
