"""PASCAL VOC trees: the split lists, annotation XML and image files of a VOC root, read into a
``Dataset``.

The root is the folder that holds Annotations/ and ImageSets/Main/ (or its VOC2007/ subfolder).
Annotation XML is parsed with DTDs refused, and VOC's 1-based inclusive boxes become 0-based;
objects outside the chosen classes are ignored, as the devkit does for other challenges.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sppdet.detector.core.errors import SppdetError
from sppdet.detector.data.records import IMAGE_SUFFIXES, Dataset, ImageRecord


def voc_root(data: str | Path) -> Path:
    """The folder that holds Annotations/ and ImageSets/: DATA itself or DATA/VOC2007."""
    data = Path(data)
    for candidate in (data, data / "VOC2007"):
        if (candidate / "Annotations").is_dir() and (candidate / "ImageSets" / "Main").is_dir():
            return candidate
    raise SppdetError(
        f"{data}: not a PASCAL VOC tree (expected Annotations/ and ImageSets/Main/ in it or in "
        f"{data}/VOC2007); pass --data the dataset root"
    )


def _parse_xml_safely(path: Path) -> ET.Element:
    raw = path.read_bytes()
    # Refuse DTDs outright: no entity expansion ("billion laughs") and no external entities.
    if b"<!DOCTYPE" in raw or b"<!ENTITY" in raw:
        raise SppdetError(f"{path}: XML with a DOCTYPE/ENTITY declaration is refused for safety")
    try:
        return ET.fromstring(raw)
    except ET.ParseError as exc:
        raise SppdetError(f"{path}: malformed XML ({exc}); fix or remove the file") from None


def _text(node: ET.Element, tag: str, path: Path) -> str:
    child = node.find(tag)
    if child is None or child.text is None:
        raise SppdetError(f"{path}: missing <{tag}> element")
    return child.text.strip()


def _number(node: ET.Element, tag: str, path: Path) -> float:
    text = _text(node, tag, path)
    try:
        return float(text)
    except ValueError:
        raise SppdetError(f"{path}: <{tag}> is not a number: {text!r}") from None


@dataclass
class _VocObject:
    name: str
    box: tuple[float, float, float, float]
    difficult: bool


def _parse_voc_annotation(path: Path) -> tuple[int, int, str | None, list[_VocObject]]:
    root = _parse_xml_safely(path)
    size = root.find("size")
    if size is None:
        raise SppdetError(f"{path}: missing <size> element")
    width, height = int(_number(size, "width", path)), int(_number(size, "height", path))
    filename = root.findtext("filename")
    objects = []
    for obj in root.iter("object"):
        name = _text(obj, "name", path)
        bnd = obj.find("bndbox")
        if bnd is None:
            raise SppdetError(f"{path}: object {name!r} has no <bndbox>")
        x1, y1, x2, y2 = (_number(bnd, t, path) for t in ("xmin", "ymin", "xmax", "ymax"))
        if x2 < x1 or y2 < y1:
            raise SppdetError(f"{path}: box of {name!r} has x2 < x1 or y2 < y1: {x1, y1, x2, y2}")
        if x1 < 1 or y1 < 1 or x2 > width or y2 > height:
            raise SppdetError(
                f"{path}: box of {name!r} {x1, y1, x2, y2} lies outside the {width}x{height} image"
            )
        difficult = (obj.findtext("difficult") or "0").strip() == "1"
        objects.append(_VocObject(name, (x1 - 1, y1 - 1, x2 - 1, y2 - 1), difficult))
    return width, height, filename, objects


def read_split_ids(root: Path, split: str) -> list[str]:
    split_file = root / "ImageSets" / "Main" / f"{split}.txt"
    if not split_file.is_file():
        raise SppdetError(f"{split_file}: split file not found; choose an existing --split")
    ids = [line.split()[0] for line in split_file.read_text().splitlines() if line.strip()]
    if not ids:
        raise SppdetError(f"{split_file}: the split lists no images")
    return ids


def _find_image(root: Path, image_id: str, filename: str | None) -> Path:
    folder = root / "JPEGImages"
    candidates = [folder / filename] if filename else []
    candidates += [folder / f"{image_id}{suffix}" for suffix in IMAGE_SUFFIXES]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise SppdetError(f"{folder / image_id}.jpg: image listed in the split is missing")


def load_voc(data: str | Path, split: str, classes: Sequence[str] | None = None) -> Dataset:
    """Read a VOC tree's split. Classes: given, else derived from the split's annotations (sorted).

    Objects of classes outside ``classes`` are ignored, as the devkit does for other challenges.
    """
    root = voc_root(data)
    parsed = []
    for image_id in read_split_ids(root, split):
        xml_path = root / "Annotations" / f"{image_id}.xml"
        if not xml_path.is_file():
            raise SppdetError(f"{xml_path}: annotation listed in split {split!r} is missing")
        width, height, filename, objects = _parse_voc_annotation(xml_path)
        parsed.append((image_id, _find_image(root, image_id, filename), width, height, objects))
    if classes is None:
        classes = sorted({o.name for *_, objects in parsed for o in objects})
        if not classes:
            raise SppdetError(f"{root}: split {split!r} has no objects; pass --classes")
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
