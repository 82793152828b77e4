"""Tests of ``sppdet.detector.data.coco``: COCO boxes become inclusive pixel boxes, crowds are
difficult, and bad files are refused naming the file."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sppdet.detector.core.errors import SppdetError
from sppdet.detector.data.coco import CocoDataset, load_coco
from tests.detector.data.shared import coco_json


def test_coco_reader_bad_files(tmp_path):
    with pytest.raises(SppdetError, match="COCO annotation file not found"):
        load_coco(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(SppdetError, match="not valid JSON"):
        load_coco(tmp_path / "bad.json")


def test_coco_reader(tmp_path):
    dataset = load_coco(coco_json(tmp_path / "gt.json"))
    assert dataset.classes == ("ant", "zebra")  # in category id order
    assert [r.image_id for r in dataset.records] == ["3", "7"]
    a = dataset.records[0]
    assert a.path == tmp_path / "a.jpg" and (a.width, a.height) == (60, 30)
    np.testing.assert_array_equal(a.boxes, [[2, 3, 11, 6], [0, 0, 59, 29]])  # inclusive ends
    assert a.labels.tolist() == [0, 1]
    assert a.difficult.tolist() == [False, True]  # iscrowd
    assert len(dataset.records[1].labels) == 0


@pytest.mark.parametrize("file_name", ["/etc/hostname", "../outside.jpg"])
def test_a_file_name_leading_out_of_the_image_folder_is_refused(tmp_path, file_name):
    path = coco_json(tmp_path / "gt.json")
    path.write_text(path.read_text().replace('"b.jpg"', json.dumps(file_name)))
    with pytest.raises(SppdetError) as caught:
        load_coco(path)
    assert str(caught.value) == (
        f"{path}: image 7's file_name {file_name!r} leads out of {tmp_path} ; give file names "
        "inside the image folder"
    )


def test_the_dataset_keeps_the_files_image_and_category_ids(tmp_path):
    dataset = load_coco(coco_json(tmp_path / "gt.json"), classes=("zebra",))
    assert isinstance(dataset, CocoDataset) and dataset.source == tmp_path / "gt.json"
    assert dataset.category_ids == {"ant": 5, "zebra": 9}  # every category of the file
    assert [r.image_id for r in dataset.records] == ["3", "7"]
    assert dataset.records[0].labels.tolist() == [0]  # the zebra crowd; the ant is left out
    assert dataset.split == "gt" and load_coco(tmp_path / "gt.json", split="val").split == "val"


def test_images_may_live_anywhere_and_split_names_their_folder(tmp_path):
    (tmp_path / "ann").mkdir()
    path = coco_json(tmp_path / "ann" / "val.json")
    assert [r.path for r in load_coco(path).records] == [
        path.parent / "a.jpg",
        path.parent / "b.jpg",
    ]
    images = tmp_path / "pictures" / "{split}"
    dataset = load_coco(path, image_dir=images, split="val2017")
    assert [r.path for r in dataset.records] == [
        tmp_path / "pictures" / "val2017" / "a.jpg",
        tmp_path / "pictures" / "val2017" / "b.jpg",
    ]


def test_missing_images_are_reported_before_any_work_with_the_first_and_the_count(tmp_path):
    (tmp_path / "ann").mkdir()
    path = coco_json(tmp_path / "ann" / "gt.json")
    images = tmp_path / "img"
    images.mkdir()
    load_coco(path, image_dir=images)  # no check unless asked: stages that read no pixels
    with pytest.raises(SppdetError) as caught:
        load_coco(path, image_dir=images, require_images=True)
    assert str(caught.value) == (
        f"{images / 'a.jpg'}: 2 of the 2 images of gt.json are missing from {images} ; pass "
        "--images DIR, the folder their file_names are relative to"
    )
    (images / "a.jpg").write_bytes(b"x")
    with pytest.raises(SppdetError, match=r"b\.jpg: 1 of the 2 images of gt\.json are missing"):
        load_coco(path, image_dir=images, require_images=True)
    (images / "b.jpg").write_bytes(b"x")
    assert len(load_coco(path, image_dir=images, require_images=True)) == 2
