"""Dataset records: PASCAL VOC trees and COCO JSON, read into one in-memory record type.

Boxes are float32 [N, 4] x1 y1 x2 y2 in 0-based pixel indices, both ends inclusive (VOC's 1-based
annotation minus one). They become 1-based only when written to VOC results files.

Images are decoded by ``read_image`` alone, so every stage sees the same pixels: 8-bit RGB, three
channels (grey is replicated, alpha dropped, CMYK converted), with the EXIF orientation applied, as
a browser or an annotation tool shows the photo. The dataset's boxes are taken to refer to that
upright view.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from sppdet.detector.errors import SppdetError

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)  # fmt: skip

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".JPG", ".JPEG", ".PNG")


@dataclass
class ImageRecord:
    image_id: str
    path: Path
    width: int
    height: int
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    difficult: np.ndarray = field(default_factory=lambda: np.zeros((0,), bool))


@dataclass
class Dataset:
    """The records of one split, with the class names their labels index."""

    name: str
    split: str
    classes: tuple[str, ...]
    records: list[ImageRecord]

    def __len__(self) -> int:
        return len(self.records)

    def by_id(self) -> dict[str, ImageRecord]:
        return {r.image_id: r for r in self.records}


# ---------------------------------------------------------------------------------------- images


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image file to uint8 RGB [H, W, 3], EXIF orientation applied.

    Raises SppdetError naming the file when it is missing, empty or undecodable.
    """
    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise SppdetError(f"{path}: cannot read image ({exc.strerror})") from None
    # IMREAD_COLOR turns grey, alpha and CMYK into 3-channel BGR and applies EXIF orientation.
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise SppdetError(f"{path}: not a readable image (corrupt or unsupported format)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


# ------------------------------------------------------------------------------------ VOC trees


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


# ------------------------------------------------------------------------------------ COCO JSON


def load_coco(
    json_path: str | Path, image_dir: str | Path | None = None, classes: Sequence[str] | None = None
) -> Dataset:
    """Read a COCO instances JSON with pycocotools. Images live in IMAGE_DIR (default: beside it).

    COCO boxes are [x, y, w, h] in continuous coordinates; a box covers pixels x .. x+w-1.
    ``iscrowd`` objects are kept as difficult (neither TP nor FP in VOC-style scoring).
    """
    from pycocotools.coco import COCO

    json_path = Path(json_path)
    if not json_path.is_file():
        raise SppdetError(f"{json_path}: COCO annotation file not found")
    try:
        json.loads(json_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SppdetError(f"{json_path}: not valid JSON ({exc})") from None
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints timings
        coco = COCO(str(json_path))
    image_dir = Path(image_dir) if image_dir else json_path.parent
    categories = sorted(coco.loadCats(coco.getCatIds()), key=lambda c: c["id"])
    names = [c["name"] for c in categories]
    classes = tuple(classes) if classes else tuple(names)
    index = {name: i for i, name in enumerate(classes)}
    cat_name = {c["id"]: c["name"] for c in categories}
    records = []
    for image_id in sorted(coco.getImgIds()):
        info = coco.loadImgs(image_id)[0]
        boxes, labels, difficult = [], [], []
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=image_id)):
            name = cat_name[ann["category_id"]]
            if name not in index:
                continue
            x, y, w, h = ann["bbox"]
            boxes.append((x, y, x + max(w, 1.0) - 1, y + max(h, 1.0) - 1))
            labels.append(index[name])
            difficult.append(bool(ann.get("iscrowd", 0)))
        records.append(
            ImageRecord(
                image_id=str(image_id),
                path=image_dir / info["file_name"],
                width=int(info["width"]),
                height=int(info["height"]),
                boxes=np.array(boxes, np.float32).reshape(-1, 4),
                labels=np.array(labels, np.int64),
                difficult=np.array(difficult, bool),
            )
        )
    return Dataset(name=json_path.stem, split=json_path.stem, classes=classes, records=records)


def parse_classes(text: str | None) -> tuple[str, ...] | None:
    """``--classes`` value: comma-separated names, or ``voc`` for the 20 VOC classes."""
    if text is None:
        return None
    if text.strip().lower() == "voc":
        return VOC_CLASSES
    names = tuple(n for n in re.split(r"[,\s]+", text.strip()) if n)
    if not names:
        raise SppdetError("--classes is empty; give comma-separated names or 'voc'")
    return names


def load_dataset(
    data: str | Path,
    split: str,
    classes: Sequence[str] | None = None,
    image_dir: str | Path | None = None,
) -> Dataset:
    """A VOC tree (DATA is a folder) or a COCO JSON (DATA ends in .json; split is ignored)."""
    data = Path(data)
    if data.suffix.lower() == ".json":
        return load_coco(data, image_dir=image_dir, classes=classes)
    if not data.exists():
        raise SppdetError(f"{data}: dataset not found; pass --data a VOC root or a COCO .json")
    return load_voc(data, split, classes)
