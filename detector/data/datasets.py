"""Which dataset ``--data`` names: a VOC tree (a folder) or a COCO JSON (a ``.json`` file), the
split of it ``--split`` selects, and the ``--classes`` option.

A COCO JSON holds one split. ``--split S`` selects it when the file is named for S (``S.json`` or
``<anything>_S.json``, e.g. ``instances_val2017.json`` for ``val2017``), else the file named for
S beside it (``S.json`` or ``instances_S.json``); any other split is refused, naming what is
accepted, rather than ignored.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from sppdet.detector.core.errors import SppdetError
from sppdet.detector.data.coco import load_coco
from sppdet.detector.data.records import VOC_CLASSES, Dataset
from sppdet.detector.data.voc import load_voc

COCO_SPLIT_PREFIX = "instances_"  # COCO's own file names: instances_<split>.json


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


def is_coco(data: str | Path) -> bool:
    """Whether DATA names a COCO JSON (else a VOC tree)."""
    return Path(data).suffix.lower() == ".json"


def coco_split_file(data: str | Path, split: str) -> Path:
    """The COCO JSON that holds SPLIT: DATA when it is named for SPLIT, else the file named for
    SPLIT beside it; refused when there is none."""
    data = Path(data)
    if not data.is_file():
        raise SppdetError(
            f"{data}: COCO annotation file not found ; pass --data an instances .json file"
        )
    if data.stem == split or data.stem.endswith(f"_{split}"):
        return data
    beside = [data.with_name(f"{split}.json"), data.with_name(f"{COCO_SPLIT_PREFIX}{split}.json")]
    for candidate in beside:
        if candidate.is_file():
            return candidate
    raise SppdetError(
        f"{data}: a COCO file holds one split, {data.stem!r}, and no {beside[0].name} or "
        f"{beside[1].name} lies beside it for split {split!r} ; pass --split {data.stem}, or put "
        f"split {split!r} in {beside[1]}"
    )


def load_dataset(
    data: str | Path,
    split: str,
    classes: Sequence[str] | None = None,
    image_dir: str | Path | None = None,
    require_images: bool = False,
) -> Dataset:
    """A VOC tree's SPLIT (DATA is a folder) or the COCO JSON holding SPLIT (DATA ends in
    .json, see ``coco_split_file``; its images in IMAGE_DIR, default beside it).

    A VOC tree's images must exist; a COCO file's must with REQUIRE_IMAGES (the stages that read
    pixels ask for it, so that a missing image is reported before any work starts).
    """
    data = Path(data)
    if is_coco(data):
        return load_coco(
            coco_split_file(data, split), image_dir, classes, split, require_images=require_images
        )
    if image_dir is not None:
        raise SppdetError(
            f"{data}: a VOC tree's images are in its JPEGImages/ ; leave out --images, which "
            "is for COCO .json data"
        )
    if not data.exists():
        raise SppdetError(f"{data}: dataset not found; pass --data a VOC root or a COCO .json")
    return load_voc(data, split, classes)
