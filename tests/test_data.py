"""Dataset readers: VOC trees (every bad-input case named), COCO JSON, class lists, images."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from sppdet.detector.data import (
    VOC_CLASSES,
    load_coco,
    load_dataset,
    load_voc,
    parse_classes,
    read_image,
)
from sppdet.detector.errors import SppdetError
from sppdet.detector.synthetic import SyntheticObject, write_voc_image, write_voc_split

GOOD_OBJECTS = [
    SyntheticObject("dog", (10, 10, 59, 49)),
    SyntheticObject("cat", (0, 0, 119, 99), difficult=True),  # the whole 120x100 image
]


def voc_tree(root: Path, ids=("000001", "000002"), objects=GOOD_OBJECTS) -> Path:
    for image_id in ids:
        write_voc_image(root, image_id, np.zeros((100, 120, 3), np.uint8), objects)
    write_voc_split(root, "test", list(ids))
    return root


def annotation(body: str, width: int = 120, height: int = 100) -> str:
    return (
        f"<annotation><size><width>{width}</width><height>{height}</height></size>"
        f"{body}</annotation>"
    )


def box_object(name: str, x1, y1, x2, y2, difficult: int = 0) -> str:
    return (
        f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{x1}</xmin>"
        f"<ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
    )


# ----------------------------------------------------------------------------- reading a tree


def test_voc_boxes_become_zero_based_and_difficult_is_kept(tmp_path):
    dataset = load_voc(voc_tree(tmp_path), "test")
    assert dataset.classes == ("cat", "dog")  # derived from the data, sorted
    record = dataset.records[0]
    assert (record.image_id, record.width, record.height) == ("000001", 120, 100)
    assert record.path == tmp_path / "JPEGImages" / "000001.jpg"
    np.testing.assert_array_equal(record.boxes, [[10, 10, 59, 49], [0, 0, 119, 99]])
    assert record.labels.tolist() == [1, 0]
    assert record.difficult.tolist() == [False, True]  # not dropped at load time
    xml = (tmp_path / "Annotations" / "000001.xml").read_text()
    assert "<xmin>11</xmin>" in xml and "<xmax>120</xmax>" in xml  # 1-based on disk


def test_voc_given_classes_filter_objects(tmp_path):
    dataset = load_voc(voc_tree(tmp_path), "test", classes=("dog", "horse"))
    assert dataset.classes == ("dog", "horse")
    assert dataset.records[0].labels.tolist() == [0]
    np.testing.assert_array_equal(dataset.records[0].boxes, [[10, 10, 59, 49]])


def test_voc_root_may_hold_a_voc2007_folder(tmp_path):
    voc_tree(tmp_path / "VOC2007")
    assert len(load_dataset(tmp_path, "test")) == 2


def test_voc_split_without_objects_needs_classes(tmp_path):
    voc_tree(tmp_path, objects=[])
    with pytest.raises(SppdetError, match="has no objects; pass --classes"):
        load_voc(tmp_path, "test")
    assert load_voc(tmp_path, "test", classes=("dog",)).records[0].boxes.shape == (0, 4)


def test_voc_image_found_through_filename_element(tmp_path):
    voc_tree(tmp_path, ids=("a",))
    (tmp_path / "JPEGImages" / "a.jpg").rename(tmp_path / "JPEGImages" / "photo.png")
    xml = tmp_path / "Annotations" / "a.xml"
    xml.write_text(xml.read_text().replace("<filename>a.jpg", "<filename>photo.png"))
    assert load_voc(tmp_path, "test").records[0].path.name == "photo.png"


# ----------------------------------------------------------------------------- bad input


def test_missing_voc_tree(tmp_path):
    with pytest.raises(SppdetError, match="not a PASCAL VOC tree"):
        load_voc(tmp_path, "test")
    with pytest.raises(SppdetError, match="dataset not found"):
        load_dataset(tmp_path / "nowhere", "test")


def test_missing_split_file(tmp_path):
    voc_tree(tmp_path)
    with pytest.raises(SppdetError, match=r"val.txt: split file not found"):
        load_voc(tmp_path, "val")


def test_empty_split_file(tmp_path):
    voc_tree(tmp_path)
    write_voc_split(tmp_path, "empty", [])
    with pytest.raises(SppdetError, match="the split lists no images"):
        load_voc(tmp_path, "empty")


def test_split_id_without_xml(tmp_path):
    voc_tree(tmp_path)
    (tmp_path / "Annotations" / "000002.xml").unlink()
    with pytest.raises(SppdetError, match=r"000002.xml: annotation listed in split 'test'"):
        load_voc(tmp_path, "test")


def test_split_id_without_image(tmp_path):
    voc_tree(tmp_path)
    (tmp_path / "JPEGImages" / "000002.jpg").unlink()
    with pytest.raises(SppdetError, match=r"000002.jpg: image listed in the split is missing"):
        load_voc(tmp_path, "test")


def write_xml(tmp_path: Path, text: str) -> None:
    voc_tree(tmp_path)
    (tmp_path / "Annotations" / "000002.xml").write_text(text)


def test_malformed_xml(tmp_path):
    write_xml(tmp_path, annotation(box_object("dog", 1, 1, 5, 5))[:-5])
    with pytest.raises(SppdetError, match=r"000002.xml: malformed XML"):
        load_voc(tmp_path, "test")


@pytest.mark.parametrize(
    "text",
    [
        # "Billion laughs": exponential entity expansion.
        '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY l "lol"><!ENTITY l2 "&l;&l;&l;&l;">]>'
        + annotation("<object><name>&l2;</name></object>"),
        # External entity: would read a local file into the annotation.
        '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        + annotation("<object><name>&x;</name></object>"),
    ],
)
def test_xml_entities_are_refused(tmp_path, text):
    write_xml(tmp_path, text)
    with pytest.raises(SppdetError, match="DOCTYPE/ENTITY declaration is refused"):
        load_voc(tmp_path, "test")


@pytest.mark.parametrize(
    ("box", "message"),
    [
        ((50, 10, 40, 20), "has x2 < x1 or y2 < y1"),
        ((10, 50, 20, 40), "has x2 < x1 or y2 < y1"),
        ((10, 10, 121, 20), "lies outside the 120x100 image"),
        ((10, 10, 20, 101), "lies outside the 120x100 image"),
        ((0, 10, 20, 20), "lies outside the 120x100 image"),  # VOC pixels start at 1
    ],
)
def test_bad_box(tmp_path, box, message):
    write_xml(tmp_path, annotation(box_object("dog", *box)))
    with pytest.raises(SppdetError, match=message):
        load_voc(tmp_path, "test")


def test_box_on_the_image_border_is_fine(tmp_path):
    write_xml(tmp_path, annotation(box_object("dog", 1, 1, 120, 100)))
    np.testing.assert_array_equal(load_voc(tmp_path, "test").records[1].boxes, [[0, 0, 119, 99]])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("<annotation></annotation>", "missing <size> element"),
        (annotation("<object><name>dog</name></object>"), "has no <bndbox>"),
        (annotation(box_object("dog", "ten", 1, 5, 5)), "<xmin> is not a number"),
    ],
)
def test_incomplete_annotation(tmp_path, text, message):
    write_xml(tmp_path, text)
    with pytest.raises(SppdetError, match=message):
        load_voc(tmp_path, "test")


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


def test_coco_reader_bad_files(tmp_path):
    with pytest.raises(SppdetError, match="COCO annotation file not found"):
        load_coco(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(SppdetError, match="not valid JSON"):
        load_coco(tmp_path / "bad.json")


# ----------------------------------------------------------------------------- classes


def test_parse_classes():
    assert parse_classes(None) is None
    assert parse_classes("voc") == VOC_CLASSES and len(VOC_CLASSES) == 20
    assert parse_classes("cat, dog horse") == ("cat", "dog", "horse")
    with pytest.raises(SppdetError, match="--classes is empty"):
        parse_classes(" , ")


# ----------------------------------------------------------------------------- images


def test_read_image_gives_rgb_and_three_channels(tmp_path):
    bgr = np.zeros((4, 6, 3), np.uint8)
    bgr[..., 2] = 255  # red in OpenCV's BGR order
    cv2.imwrite(str(tmp_path / "red.png"), bgr)
    rgb = read_image(tmp_path / "red.png")
    assert rgb.shape == (4, 6, 3) and rgb.dtype == np.uint8
    assert rgb[0, 0].tolist() == [255, 0, 0]
    cv2.imwrite(str(tmp_path / "grey.png"), np.full((5, 7), 99, np.uint8))
    assert read_image(tmp_path / "grey.png").shape == (5, 7, 3)


def test_read_image_applies_exif_orientation(tmp_path):
    pil = pytest.importorskip("PIL.Image")
    image = pil.new("RGB", (40, 20), (0, 0, 255))
    exif = pil.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    image.save(tmp_path / "rotated.jpg", exif=exif.tobytes())
    assert read_image(tmp_path / "rotated.jpg").shape == (40, 20, 3)  # upright: 20 wide


def test_read_image_errors(tmp_path):
    with pytest.raises(SppdetError, match="cannot read image"):
        read_image(tmp_path / "missing.jpg")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(SppdetError, match="not a readable image"):
        read_image(tmp_path / "empty.jpg")
    (tmp_path / "junk.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    with pytest.raises(SppdetError, match="not a readable image"):
        read_image(tmp_path / "junk.jpg")
