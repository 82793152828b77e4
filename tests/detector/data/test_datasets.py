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
    via = load_dataset(gt, "gt")
    direct = load_coco(gt)
    assert (via.name, via.classes) == (direct.name, direct.classes) == ("gt", ("ant", "zebra"))
    assert [r.image_id for r in via.records] == [r.image_id for r in direct.records]
    with pytest.raises(SppdetError, match="dataset not found"):
        load_dataset(tmp_path / "nowhere", "test")
    with pytest.raises(SppdetError, match="nowhere.json: COCO annotation file not found"):
        load_dataset(tmp_path / "nowhere.json", "nowhere")


def test_a_coco_split_is_the_file_named_for_it_or_one_beside_it(tmp_path):
    train = coco_json(tmp_path / "instances_train2017.json")
    assert load_dataset(train, "train2017").split == "train2017"  # <anything>_<split>.json
    assert load_dataset(train, "instances_train2017").split == "instances_train2017"
    val = coco_json(tmp_path / "instances_val2017.json")
    beside = load_dataset(train, "val2017")
    assert (beside.split, beside.source) == ("val2017", val)
    plain = coco_json(tmp_path / "test.json")
    assert load_dataset(train, "test").source == plain


def test_a_split_the_coco_file_does_not_hold_is_refused_naming_what_is_accepted(tmp_path):
    gt = coco_json(tmp_path / "gt.json")
    with pytest.raises(SppdetError) as caught:
        load_dataset(gt, "trainval")
    assert str(caught.value) == (
        f"{gt}: a COCO file holds one split, 'gt', and no trainval.json or "
        f"instances_trainval.json lies beside it for split 'trainval' ; pass --split gt, or put "
        f"split 'trainval' in {tmp_path / 'instances_trainval.json'}"
    )


def test_images_of_a_voc_tree_are_its_own(tmp_path):
    root = voc_tree(tmp_path / "voc")
    with pytest.raises(SppdetError, match="a VOC tree's images are in its JPEGImages/"):
        load_dataset(root, "test", image_dir=tmp_path)


def test_missing_coco_images_are_refused_when_asked(tmp_path):
    gt = coco_json(tmp_path / "gt.json")
    assert len(load_dataset(gt, "gt")) == 2  # no pixels read: no check
    with pytest.raises(SppdetError, match=r"a\.jpg: 2 of the 2 images of gt\.json are missing"):
        load_dataset(gt, "gt", require_images=True)


def test_parse_classes():
    assert parse_classes(None) is None
    assert parse_classes("voc") == VOC_CLASSES and len(VOC_CLASSES) == 20
    assert parse_classes("cat, dog horse") == ("cat", "dog", "horse")
    with pytest.raises(SppdetError, match="--classes is empty"):
        parse_classes(" , ")
