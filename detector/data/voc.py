"""PASCAL VOC trees: the split lists, annotation XML and image files of a VOC root, read into a
``Dataset``.

The root is the folder that holds Annotations/ and ImageSets/Main/ (or its VOC2007/ subfolder).
Annotation XML is parsed with DTDs refused, and VOC's 1-based inclusive boxes become 0-based;
objects outside the chosen classes are ignored, as the devkit does for other challenges.

Every file read stays inside the tree: split ids and ``<filename>`` elements that would lead out
of it (an absolute path, ``..``) are refused. The ``<size>`` of an annotation is compared with its
image's header: an annotation of the stored view of a photo that its EXIF orientation turns is
refused (its boxes would land on other pixels), and other differences are reported in one
warning (evaluation alone never decodes the images).
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sppdet.detector.core.errors import SppdetError
from sppdet.detector.data.images import image_header, path_inside
from sppdet.detector.data.records import IMAGE_SUFFIXES, Dataset, ImageRecord

log = logging.getLogger(__name__)


def voc_root(data: str | Path) -> Path:
    """The folder that holds Annotations/ and ImageSets/: DATA itself or DATA/VOC2007."""
    data = Path(data)
    for candidate in (data, data / "VOC2007"):
        if (candidate / "Annotations").is_dir() and (candidate / "ImageSets" / "Main").is_dir():
            return candidate
    raise SppdetError(
        f"{data}: not a PASCAL VOC tree (expected Annotations/ and ImageSets/Main/ in it or in "
        f"{data}/VOC2007) ; pass --data the dataset root"
    )


def _parse_xml_safely(path: Path) -> ET.Element:
    raw = path.read_bytes()
    # Refuse DTDs outright: no entity expansion ("billion laughs") and no external entities.
    if b"<!DOCTYPE" in raw or b"<!ENTITY" in raw:
        raise SppdetError(
            f"{path}: XML with a DOCTYPE/ENTITY declaration is refused for safety ; remove the "
            "declarations (VOC annotations need none)"
        )
    try:
        return ET.fromstring(raw)
    except ET.ParseError as exc:
        raise SppdetError(f"{path}: malformed XML ({exc}) ; fix or remove the file") from None


def _text(node: ET.Element, tag: str, path: Path) -> str:
    child = node.find(tag)
    if child is None or child.text is None:
        raise SppdetError(f"{path}: missing <{tag}> element ; add it")
    return child.text.strip()


def _number(node: ET.Element, tag: str, path: Path) -> float:
    text = _text(node, tag, path)
    try:
        return float(text)
    except ValueError:
        raise SppdetError(f"{path}: <{tag}> is not a number: {text!r} ; write a number") from None


@dataclass
class _VocObject:
    name: str
    box: tuple[float, float, float, float]
    difficult: bool


def _parse_voc_annotation(path: Path) -> tuple[int, int, str | None, list[_VocObject]]:
    root = _parse_xml_safely(path)
    size = root.find("size")
    if size is None:
        raise SppdetError(f"{path}: missing <size> element ; add <size> with <width> and <height>")
    width, height = int(_number(size, "width", path)), int(_number(size, "height", path))
    filename = root.findtext("filename")
    objects = []
    for obj in root.iter("object"):
        name = _text(obj, "name", path)
        bnd = obj.find("bndbox")
        if bnd is None:
            raise SppdetError(f"{path}: object {name!r} has no <bndbox> ; add its box")
        x1, y1, x2, y2 = (_number(bnd, t, path) for t in ("xmin", "ymin", "xmax", "ymax"))
        if x2 < x1 or y2 < y1:
            raise SppdetError(
                f"{path}: box of {name!r} has x2 < x1 or y2 < y1: {x1, y1, x2, y2} ; correct "
                "the box"
            )
        if x1 < 1 or y1 < 1 or x2 > width or y2 > height:
            raise SppdetError(
                f"{path}: box of {name!r} {x1, y1, x2, y2} lies outside the {width}x{height} "
                "image ; correct the box or <size>"
            )
        difficult = (obj.findtext("difficult") or "0").strip() == "1"
        objects.append(_VocObject(name, (x1 - 1, y1 - 1, x2 - 1, y2 - 1), difficult))
    return width, height, filename, objects


def read_split_ids(root: Path, split: str) -> list[str]:
    """The image ids SPLIT lists (first field of each line), each once and inside the tree."""
    split_file = root / "ImageSets" / "Main" / f"{split}.txt"
    if not split_file.is_file():
        raise SppdetError(f"{split_file}: split file not found ; choose an existing --split")
    try:
        lines = split_file.read_bytes().decode().splitlines()
    except UnicodeDecodeError:
        raise SppdetError(f"{split_file}: not UTF-8 text ; list one image id per line") from None
    first_line: dict[str, int] = {}
    for n, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        image_id = fields[0]
        if path_inside(root / "Annotations", f"{image_id}.xml") is None:
            raise SppdetError(
                f"{split_file}:{n}: image id {image_id!r} leads out of the dataset ; list plain "
                "image ids such as 000005"
            )
        if image_id in first_line:
            raise SppdetError(
                f"{split_file}:{n}: image id {image_id!r} is listed twice (first on line "
                f"{first_line[image_id]}) ; list each image once"
            )
        first_line[image_id] = n
    if not first_line:
        raise SppdetError(f"{split_file}: the split lists no images ; list one image id per line")
    return list(first_line)


def _find_image(root: Path, image_id: str, filename: str | None, xml_path: Path) -> Path:
    folder = root / "JPEGImages"
    candidates = []
    if filename:
        named = path_inside(folder, filename)
        if named is None:
            raise SppdetError(
                f"{xml_path}: <filename> {filename!r} leads out of {folder} ; give the image's "
                "name inside JPEGImages/"
            )
        candidates.append(named)
    candidates += [folder / f"{image_id}{suffix}" for suffix in IMAGE_SUFFIXES]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise SppdetError(
        f"{folder / image_id}.jpg: image listed in the split is missing ; add it or remove "
        "its id from the split"
    )


def _size_mismatch(xml_path: Path, image_path: Path, width: int, height: int) -> str | None:
    """How <size> differs from the image as ``read_image`` shows it (None: it does not, or the
    header is unreadable); an annotation made on the stored view of a turned photo is refused."""
    header = image_header(image_path)
    if header is None or header.upright_size == (width, height):
        return None
    shown_w, shown_h = header.upright_size
    if (width, height) == (header.width, header.height):  # the EXIF orientation turns it
        raise SppdetError(
            f"{xml_path}: <size> {width}x{height} is the stored size of {image_path.name}, but its "
            f"EXIF orientation {header.orientation} shows it as {shown_w}x{shown_h}, the view "
            "sppdet decodes and the boxes must refer to ; annotate the displayed view (swap "
            "<size>, turn the boxes) or remove the orientation tag from the image"
        )
    return f"{xml_path}: <size> {width}x{height}, image {shown_w}x{shown_h}"


def load_voc(data: str | Path, split: str, classes: Sequence[str] | None = None) -> Dataset:
    """Read a VOC tree's split. Classes: given, else derived from the split's annotations (sorted).

    Objects of classes outside ``classes`` are ignored, as the devkit does for other challenges.
    """
    root = voc_root(data)
    parsed = []
    mismatches: list[str] = []
    for image_id in read_split_ids(root, split):
        xml_path = root / "Annotations" / f"{image_id}.xml"
        if not xml_path.is_file():
            raise SppdetError(
                f"{xml_path}: annotation listed in split {split!r} is missing ; add it or remove "
                "the id from the split"
            )
        width, height, filename, objects = _parse_voc_annotation(xml_path)
        image_path = _find_image(root, image_id, filename, xml_path)
        mismatch = _size_mismatch(xml_path, image_path, width, height)
        if mismatch is not None:
            mismatches.append(mismatch)
        parsed.append((image_id, image_path, width, height, objects))
    if mismatches:
        log.warning(
            "%d of %d annotations of split %r give a <size> other than their image's (first: "
            "%s) ; correct <size> and the boxes, which refer to the image as it displays",
            len(mismatches), len(parsed), split, mismatches[0],
        )  # fmt: skip
    if classes is None:
        classes = sorted({o.name for *_, objects in parsed for o in objects})
        if not classes:
            raise SppdetError(f"{root}: split {split!r} has no objects ; pass --classes")
    index = {name: i for i, name in enumerate(classes)}
    records = []
    for image_id, path, width, height, objects in parsed:
        kept = [o for o in objects if o.name in index]
        records.append(
            ImageRecord(
                image_id=image_id,
                path=path,
                width=width,
                height=height,
                boxes=np.array([o.box for o in kept], np.float32).reshape(-1, 4),
                labels=np.array([index[o.name] for o in kept], np.int64),
                difficult=np.array([o.difficult for o in kept], bool),
            )
        )
    return Dataset(name=root.name, split=split, classes=tuple(classes), records=records)
