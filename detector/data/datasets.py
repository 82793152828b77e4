"""Which dataset ``--data`` names: a VOC tree (a folder) or a COCO JSON (a ``.json`` file), and the
``--classes`` option.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from sppdet.detector.core.errors import SppdetError
from sppdet.detector.data.coco import load_coco
from sppdet.detector.data.records import VOC_CLASSES, Dataset
from sppdet.detector.data.voc import load_voc


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
