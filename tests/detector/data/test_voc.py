"""Tests of ``sppdet.detector.data.voc``: reading VOC trees, and every bad-input case refused with
a message that names the file."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from sppdet.detector.core.errors import SppdetError
from sppdet.detector.data.datasets import load_dataset
from sppdet.detector.data.images import read_image
from sppdet.detector.data.synthetic import write_voc_split
from sppdet.detector.data.voc import load_voc
from tests.detector.data.shared import voc_tree


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


def test_voc_split_without_objects_needs_classes(tmp_path):
    voc_tree(tmp_path, objects=[])
    with pytest.raises(SppdetError, match="has no objects ; pass --classes"):
        load_voc(tmp_path, "test")
    assert load_voc(tmp_path, "test", classes=("dog",)).records[0].boxes.shape == (0, 4)


def test_voc_image_found_through_filename_element(tmp_path):
    voc_tree(tmp_path, ids=("a",))
    (tmp_path / "JPEGImages" / "a.jpg").rename(tmp_path / "JPEGImages" / "photo.png")
    xml = tmp_path / "Annotations" / "a.xml"
    xml.write_text(xml.read_text().replace("<filename>a.jpg", "<filename>photo.png"))
    assert load_voc(tmp_path, "test").records[0].path.name == "photo.png"


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


# ------------------------------------------------------------------ files outside the tree, sizes


def test_an_absolute_filename_is_refused(tmp_path):
    voc_tree(tmp_path)
    xml = tmp_path / "Annotations" / "000002.xml"
    xml.write_text(xml.read_text().replace("<filename>000002.jpg", "<filename>/etc/hostname"))
    with pytest.raises(SppdetError) as caught:
        load_voc(tmp_path, "test")
    assert str(caught.value) == (
        f"{xml}: <filename> '/etc/hostname' leads out of {tmp_path / 'JPEGImages'} ; give the "
        "image's name inside JPEGImages/"
    )


@pytest.mark.parametrize("image_id", ["../../outside", "/tmp/x", "a/../../b"])
def test_a_split_id_leading_out_of_the_tree_is_refused(tmp_path, image_id):
    voc_tree(tmp_path)
    (tmp_path / "outside.xml").write_text(annotation(""))
    write_voc_split(tmp_path, "test", ["000001", image_id])
    with pytest.raises(SppdetError) as caught:
        load_voc(tmp_path, "test")
    split_file = tmp_path / "ImageSets" / "Main" / "test.txt"
    assert str(caught.value) == (
        f"{split_file}:2: image id {image_id!r} leads out of the dataset ; list plain image ids "
        "such as 000005"
    )


def test_a_duplicate_id_names_the_split_file_and_both_lines(tmp_path):
    voc_tree(tmp_path)
    write_voc_split(tmp_path, "test", ["000001", "000002", "000001"])
    split_file = tmp_path / "ImageSets" / "Main" / "test.txt"
    with pytest.raises(SppdetError) as caught:
        load_voc(tmp_path, "test")
    assert str(caught.value) == (
        f"{split_file}:3: image id '000001' is listed twice (first on line 1) ; list each image "
        "once"
    )


def test_an_annotation_of_the_stored_view_of_a_turned_photo_is_refused(tmp_path):
    pil = pytest.importorskip("PIL.Image")
    voc_tree(tmp_path)
    exif = pil.Exif()
    exif[0x0112] = 6  # shown turned by 90 degrees: 100 wide, 120 high
    photo = tmp_path / "JPEGImages" / "000002.jpg"
    pil.new("RGB", (120, 100)).save(photo, exif=exif.tobytes())
    with pytest.raises(SppdetError) as caught:
        load_voc(tmp_path, "test")
    assert str(caught.value).startswith(
        f"{tmp_path / 'Annotations' / '000002.xml'}: <size> 120x100 is the stored size of "
        "000002.jpg, but its EXIF orientation 6 shows it as 100x120, the view sppdet decodes"
    )
    assert read_image(photo).shape == (120, 100, 3)  # what every stage would see


def test_other_size_differences_are_one_warning(tmp_path, caplog):
    voc_tree(tmp_path, ids=("000001", "000002", "000003"))
    for image_id in ("000002", "000003"):
        xml = tmp_path / "Annotations" / f"{image_id}.xml"
        xml.write_text(xml.read_text().replace("<width>120</width>", "<width>130</width>"))
    with caplog.at_level(logging.WARNING, "sppdet.detector.data.voc"):
        dataset = load_voc(tmp_path, "test")
    assert [r.width for r in dataset.records] == [120, 130, 130]  # the annotation's numbers
    [record] = caplog.records
    xml = tmp_path / "Annotations" / "000002.xml"
    assert record.getMessage() == (
        f"2 of 3 annotations of split 'test' give a <size> other than their image's (first: "
        f"{xml}: <size> 130x100, image 120x100) ; correct <size> and the boxes, which refer to "
        "the image as it displays"
    )
