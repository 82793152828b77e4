"""COCO instances JSON read into a ``Dataset`` with pycocotools.

COCO boxes are [x, y, w, h] in continuous coordinates and become 0-based inclusive pixel boxes;
crowd objects are kept as difficult, so VOC-style scoring counts them as neither hit nor miss.
An image's ``file_name`` is relative to the image folder (``--images``, default: the JSON's
folder) and must stay inside it (no absolute path, no ``..``). The dataset keeps the file's own
image and category ids (``CocoDataset``), so detections written back as COCO results match it.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sppdet.detector.core.errors import SppdetError
from sppdet.detector.data.images import path_inside
from sppdet.detector.data.records import Dataset, ImageRecord

SPLIT_PLACEHOLDER = "{split}"  # in --images: replaced by the split's name


@dataclass
class CocoDataset(Dataset):
    """A split read from a COCO JSON: image ids are the file's ids (as strings), and
    ``category_ids`` maps every category name of the file to its id."""

    source: Path = field(default_factory=Path)
    category_ids: dict[str, int] = field(default_factory=dict)


def load_coco(
    json_path: str | Path,
    image_dir: str | Path | None = None,
    classes: Sequence[str] | None = None,
    split: str | None = None,
    require_images: bool = False,
) -> CocoDataset:
    """Read a COCO instances JSON with pycocotools. Images live in IMAGE_DIR (default: beside
    the JSON; ``{split}`` in it becomes SPLIT). SPLIT names the split (default: the file's stem).

    COCO boxes are [x, y, w, h] in continuous coordinates; a box covers pixels x .. x+w-1.
    ``iscrowd`` objects are kept as difficult (neither TP nor FP in VOC-style scoring). With
    REQUIRE_IMAGES, a missing image file is refused before anything reads one: the first such
    file and how many there are.
    """
    from pycocotools.coco import COCO

    json_path = Path(json_path)
    split = split or json_path.stem
    if not json_path.is_file():
        raise SppdetError(
            f"{json_path}: COCO annotation file not found ; pass --data an instances .json file"
        )
    try:
        json.loads(json_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SppdetError(
            f"{json_path}: not valid JSON ({exc}) ; fix the file or export it again"
        ) from None
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints timings
        coco = COCO(str(json_path))
    image_dir = (
        Path(str(image_dir).replace(SPLIT_PLACEHOLDER, split)) if image_dir else json_path.parent
    )
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
        path = path_inside(image_dir, str(info["file_name"]))
        if path is None:
            raise SppdetError(
                f"{json_path}: image {image_id}'s file_name {info['file_name']!r} leads out of "
                f"{image_dir} ; give file names inside the image folder"
            )
        records.append(
            ImageRecord(
                image_id=str(image_id),
                path=path,
                width=int(info["width"]),
                height=int(info["height"]),
                boxes=np.array(boxes, np.float32).reshape(-1, 4),
                labels=np.array(labels, np.int64),
                difficult=np.array(difficult, bool),
            )
        )
    if require_images:
        check_image_files(records, json_path, image_dir)
    return CocoDataset(
        name=json_path.stem,
        split=split,
        classes=classes,
        records=records,
        source=json_path,
        category_ids={c["name"]: c["id"] for c in categories},
    )


def check_image_files(records: Sequence[ImageRecord], json_path: Path, image_dir: Path) -> None:
    """Refuse RECORDS whose image files are missing, naming the first one and the count."""
    missing = [r.path for r in records if not r.path.is_file()]
    if missing:
        raise SppdetError(
            f"{missing[0]}: {len(missing)} of the {len(records)} images of {json_path.name} are "
            f"missing from {image_dir} ; pass --images DIR, the folder their file_names are "
            "relative to"
        )
