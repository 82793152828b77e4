"""The classification samples ``pretrain`` trains and ``classify-eval`` tests on: labelled
regions of images, and the held-out split.

The data is an image-folder tree (one folder per class; ``DATA/<split>/`` when that folder
exists, else ``DATA`` itself) or a detection dataset (VOC tree or COCO JSON), which becomes K+1
classes: the ground-truth objects (difficult ones left out) and ``bg_per_image`` background boxes
per image, drawn at random sizes and places with IoU < 0.3 to every object (class 0,
"background"). A sample is a region of an image: the whole image, or a box grown by
1/crop_fraction around its centre, so that the centre crop of the region is about the box itself.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sppdet.detector.core.boxes import iou_matrix
from sppdet.detector.core.config import PretrainConfig
from sppdet.detector.core.errors import SppdetError
from sppdet.detector.data.datasets import load_dataset
from sppdet.detector.data.records import IMAGE_SUFFIXES
from sppdet.detector.data.voc import voc_root

BACKGROUND = "background"
BG_CANDIDATES = 64  # random background boxes tried per image
BG_SIDE_RANGE = (0.15, 0.75)  # background box side / sqrt(image area), log-uniform
BG_ASPECT = 2.0  # background box aspect in [1/2, 2], log-uniform
BG_MIN_SIDE = 16  # pixels


@dataclass
class SampleSet:
    """Classification samples: regions of images with a class label.

    ``regions`` are inclusive 0-based pixel boxes x1 y1 x2 y2 in the decoded image; an infinite
    x2/y2 reaches the image's edge (the whole image for folder samples). ``image`` indexes
    ``paths``; samples of one image are held out together.
    """

    kind: str  # "folder" | "detection"
    root: str
    classes: tuple[str, ...]  # output names; a detection dataset's start with "background"
    paths: list[Path]
    image: np.ndarray  # [N] int64
    regions: np.ndarray  # [N, 4] float64
    labels: np.ndarray  # [N] int64

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: np.ndarray) -> SampleSet:
        index = np.asarray(index, np.int64)
        return SampleSet(
            self.kind,
            self.root,
            self.classes,
            self.paths,
            self.image[index],
            self.regions[index],
            self.labels[index],
        )

    def counts(self) -> dict[str, int]:
        found = np.bincount(self.labels, minlength=len(self.classes))
        return {name: int(n) for name, n in zip(self.classes, found, strict=True)}

    def describe(self) -> dict[str, Any]:
        """What the fingerprint of a training run covers: the source and a hash of the samples."""
        digest = hashlib.sha256()
        digest.update("\n".join(str(p) for p in self.paths).encode())
        for array in (self.image, self.regions, self.labels):
            digest.update(np.ascontiguousarray(array).tobytes())
        return {
            "kind": self.kind,
            "root": self.root,
            "classes": list(self.classes),
            "samples": len(self),
            "hash": digest.hexdigest()[:16],
        }


def load_samples(
    data: str | Path,
    split: str,
    cfg: PretrainConfig,
    classes: Sequence[str] | None = None,
    require_all: bool = True,
    seed: int | None = None,
) -> SampleSet:
    """The samples of DATA's SPLIT: an image-folder tree, or crops of a detection dataset.

    CLASSES fixes the class list (an evaluation passes the checkpoint's, background included for
    a detection dataset); REQUIRE_ALL makes a class without samples an error (training).
    """
    data = Path(data)
    if data.suffix.lower() == ".json" or _is_voc(data):
        names = [c for c in classes if c != BACKGROUND] if classes is not None else None
        return detection_samples(data, split, cfg, names, require_all, seed)
    if data.is_dir():
        return folder_samples(data, split, classes, require_all)
    raise SppdetError(
        f"{data}: not found; pass --data an image-folder tree (one folder per class), a VOC "
        "root or a COCO .json"
    )


def _is_voc(data: Path) -> bool:
    try:
        voc_root(data)
    except SppdetError:
        return False
    return True


def _image_files(folder: Path) -> list[Path]:
    suffixes = {s.lower() for s in IMAGE_SUFFIXES} | {".tif", ".tiff", ".webp"}
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in suffixes and not p.name.startswith(".")
    )


def folder_samples(
    data: Path, split: str, classes: Sequence[str] | None = None, require_all: bool = True
) -> SampleSet:
    """One sample per image file of ``TREE/<class>/...``; TREE is DATA/SPLIT when it exists."""
    tree = data / split if (data / split).is_dir() else data
    folders = sorted(d for d in tree.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not folders:
        raise SppdetError(
            f"{tree}: no class folders; an image-folder tree holds one sub-folder of images per "
            "class"
        )
    names = tuple(classes) if classes is not None else tuple(d.name for d in folders)
    index = {name: i for i, name in enumerate(names)}
    unknown = [d.name for d in folders if d.name not in index]
    if unknown:
        raise SppdetError(
            f"{tree}: class folders {unknown} are not classes of the model ({', '.join(names)}); "
            "remove them or evaluate a model trained on them"
        )
    if len(names) < 2:
        raise SppdetError(f"{tree}: a classifier needs at least two class folders")
    paths, labels = [], []
    for folder in folders:
        files = _image_files(folder)
        if not files and require_all:
            raise SppdetError(
                f"{folder}: class {folder.name!r} holds no images (.jpg, .png, ...); add images or "
                "remove the folder"
            )
        paths += files
        labels += [index[folder.name]] * len(files)
    if not paths:
        raise SppdetError(f"{tree}: the class folders hold no images")
    n = len(paths)
    regions = np.tile(np.array([0.0, 0.0, np.inf, np.inf]), (n, 1))
    return SampleSet(
        "folder", str(tree), names, paths, np.arange(n), regions, np.asarray(labels, np.int64)
    )


def expand_boxes(boxes: np.ndarray, factor: float, width: int, height: int) -> np.ndarray:
    """Boxes grown FACTOR times around their centres (+1 pixel convention), clipped."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    centre = (b[:, :2] + b[:, 2:]) / 2
    half = ((b[:, 2:] - b[:, :2] + 1) * factor - 1) / 2
    grown = np.concatenate([centre - half, centre + half], 1)
    return np.clip(grown, 0, np.array([width - 1, height - 1, width - 1, height - 1]))


def sample_background(
    boxes: np.ndarray,
    width: int,
    height: int,
    count: int,
    max_iou: float,
    rng: np.random.Generator,
    candidates: int = BG_CANDIDATES,
) -> np.ndarray:
    """Up to COUNT random boxes [k, 4] with IoU < MAX_IOU to every box of BOXES.

    Sides are log-uniform in BG_SIDE_RANGE of sqrt(width * height) with aspects in [1/2, 2],
    places uniform; the first COUNT candidates that pass are kept (fewer when the objects cover
    the image).
    """
    if count <= 0:
        return np.zeros((0, 4), np.float64)
    lo, hi = np.log(BG_SIDE_RANGE)
    side = np.sqrt(width * height) * np.exp(rng.uniform(lo, hi, candidates))
    aspect = np.exp(rng.uniform(-np.log(BG_ASPECT), np.log(BG_ASPECT), candidates))
    w = np.clip(np.round(side * np.sqrt(aspect)), min(BG_MIN_SIDE, width), width)
    h = np.clip(np.round(side / np.sqrt(aspect)), min(BG_MIN_SIDE, height), height)
    x1 = np.floor(rng.uniform(0, 1, candidates) * (width - w + 1))
    y1 = np.floor(rng.uniform(0, 1, candidates) * (height - h + 1))
    cand = np.stack([x1, y1, x1 + w - 1, y1 + h - 1], 1)
    if len(boxes):
        cand = cand[iou_matrix(cand, boxes).max(1) < max_iou]
    return cand[:count]


def detection_samples(
    data: Path,
    split: str,
    cfg: PretrainConfig,
    classes: Sequence[str] | None = None,
    require_all: bool = True,
    seed: int | None = None,
) -> SampleSet:
    """Object crops (label k + 1) and background crops (label 0) of a detection dataset."""
    dataset = load_dataset(data, split, classes)
    seed = cfg.seed if seed is None else seed
    context = 1.0 / cfg.crop_fraction
    paths, image, regions, labels = [], [], [], []
    for i, record in enumerate(dataset.records):
        b = record.boxes
        usable = ~record.difficult & (b[:, 2] - b[:, 0] >= 1) & (b[:, 3] - b[:, 1] >= 1)
        rng = np.random.default_rng([seed, i])
        bg = sample_background(b, record.width, record.height, cfg.bg_per_image, cfg.bg_iou, rng)
        boxes = np.concatenate([b[usable].astype(np.float64), bg])
        if not len(boxes):
            continue
        paths.append(record.path)
        image.append(np.full(len(boxes), len(paths) - 1, np.int64))
        regions.append(expand_boxes(boxes, context, record.width, record.height))
        labels.append(np.r_[record.labels[usable] + 1, np.zeros(len(bg), np.int64)])
    names = (BACKGROUND, *dataset.classes)
    samples = SampleSet(
        "detection",
        str(data),
        names,
        paths,
        np.concatenate(image) if image else np.zeros(0, np.int64),
        np.concatenate(regions) if regions else np.zeros((0, 4)),
        np.concatenate(labels).astype(np.int64) if labels else np.zeros(0, np.int64),
    )
    if require_all:
        empty = [name for name, n in samples.counts().items() if n == 0]
        if empty:
            raise SppdetError(
                f"{data}: split {split!r} has no usable (non-difficult) objects of {empty}; "
                "drop those classes with --classes or use a split that has them"
            )
    if not len(samples):
        raise SppdetError(f"{data}: split {split!r} yields no object or background crops")
    return samples


def holdout_split(samples: SampleSet, every: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) sample indices: the samples of every EVERY-th image are held out (none
    when there are fewer than EVERY images)."""
    index = np.arange(len(samples))
    if every < 2 or len(samples.paths) < every:
        return index, np.zeros(0, np.int64)
    held = samples.image % every == every - 1
    return index[~held], index[held]
