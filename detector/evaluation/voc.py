"""PASCAL VOC evaluation with the official devkit's semantics (SPEC.md "PASCAL VOC 2007
evaluation"): the detections of each class, and per-class AP and mAP against a dataset.

The matching and AP numerics are the devkit's (``evaluation.ap``); this module applies them
class by class. Difficult boxes are not counted in a class's npos. A class with npos > 0 scores
by the devkit's rules; without detections its AP is 0. A class with npos == 0 has no defined AP
(the devkit divides by zero and reports NaN): its AP is None, it is left out of the mAP, and the
evaluation notes say so. Results files are read and written by ``evaluation.results``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sppdet.detector.core.config import EvalConfig
from sppdet.detector.core.errors import SppdetError
from sppdet.detector.data.records import Dataset
from sppdet.detector.evaluation.ap import (
    average_precision_voc07,
    average_precision_voc10,
    match_detections,
    precision_recall,
)

METRICS = ("voc2007", "voc2010")


@dataclass
class ClassDetections:
    """The detections of one class: image ids [N] (str), scores [N] and 0-based boxes [N, 4]."""

    image_ids: np.ndarray
    scores: np.ndarray
    boxes: np.ndarray

    def __post_init__(self) -> None:
        self.image_ids = np.asarray(self.image_ids, dtype=str).reshape(-1)
        self.scores = np.asarray(self.scores, np.float64).reshape(-1)
        self.boxes = np.asarray(self.boxes, np.float64).reshape(-1, 4)
        if not len(self.image_ids) == len(self.scores) == len(self.boxes):
            raise ValueError("image_ids, scores and boxes must have the same length")

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def empty(cls) -> ClassDetections:
        return cls(np.zeros((0,), str), np.zeros((0,)), np.zeros((0, 4)))

    @classmethod
    def concatenate(cls, parts: Iterable[ClassDetections]) -> ClassDetections:
        """Join detections in order (the order decides ties in the VOC sort)."""
        parts = list(parts)
        if not parts:
            return cls.empty()
        return cls(
            np.concatenate([p.image_ids for p in parts]),
            np.concatenate([p.scores for p in parts]),
            np.concatenate([p.boxes for p in parts]),
        )


Detections = Mapping[str, ClassDetections]


@dataclass
class ClassResult:
    name: str
    ap: float | None  # None: no positives, AP undefined
    npos: int
    detections: int
    true_positives: int
    false_positives: int
    difficult_matches: int
    recall: np.ndarray = field(repr=False)
    precision: np.ndarray = field(repr=False)


@dataclass
class VocEvaluation:
    metric: str
    split: str
    results: list[ClassResult]
    notes: list[str] = field(default_factory=list)

    @property
    def map(self) -> float | None:
        scored = [r.ap for r in self.results if r.ap is not None]
        return float(np.mean(scored)) if scored else None

    def to_json(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "split": self.split,
            "ap": {r.name: r.ap for r in self.results},
            "map": self.map,
            "npos": {r.name: r.npos for r in self.results},
            "detections": {r.name: r.detections for r in self.results},
            "notes": list(self.notes),
        }


def _check_unique_ids(dataset: Dataset) -> list[str]:
    ids = [r.image_id for r in dataset.records]
    unique, counts = np.unique(np.array(ids, dtype=str), return_counts=True)
    if (counts > 1).any():
        dup = str(unique[np.argmax(counts > 1)])
        raise SppdetError(
            f"{dataset.name}: split {dataset.split!r} lists image {dup!r} twice; remove the "
            "duplicate line from the split file"
        )
    return ids


def _image_indices(ids: np.ndarray, index: Mapping[str, int], what: str) -> np.ndarray:
    unique, inverse = np.unique(ids, return_inverse=True)
    mapped = np.array([index.get(u, -1) for u in unique.tolist()], np.int64)
    if (mapped < 0).any():
        unknown = str(unique[np.argmax(mapped < 0)])
        raise SppdetError(f"{what}: image id {unknown!r} is not in the evaluated split")
    return mapped[inverse.reshape(-1)]


def evaluate_voc(
    dataset: Dataset,
    detections: Detections,
    metric: str = "voc2007",
    iou_threshold: float = EvalConfig.iou_threshold,
) -> VocEvaluation:
    """Score DETECTIONS (class name -> ClassDetections) against DATASET, one AP per class."""
    if metric not in METRICS:
        raise SppdetError(f"unknown VOC metric {metric!r}: choose one of {', '.join(METRICS)}")
    ap_of = average_precision_voc07 if metric == "voc2007" else average_precision_voc10
    ids = _check_unique_ids(dataset)
    index = {image_id: i for i, image_id in enumerate(ids)}
    records = dataset.records
    per_image = np.array([len(r.labels) for r in records], np.int64)
    all_image = np.repeat(np.arange(len(records)), per_image)
    all_boxes = np.concatenate([r.boxes.reshape(-1, 4) for r in records] + [np.zeros((0, 4))])
    all_boxes = all_boxes.astype(np.float64)
    all_labels = np.concatenate([r.labels for r in records] + [np.zeros(0, np.int64)])
    all_difficult = np.concatenate([r.difficult for r in records] + [np.zeros(0, bool)])
    notes = [
        f"detections of class {name!r} ignored: not one of the evaluated classes"
        for name in detections
        if name not in dataset.classes
    ]
    results = []
    for label, name in enumerate(dataset.classes):
        mine = all_labels == label
        gt_count = np.bincount(all_image[mine], minlength=len(records))
        gt_start = np.cumsum(gt_count) - gt_count  # boxes stay in image order
        difficult = all_difficult[mine]
        npos = int((~difficult).sum())
        dets = detections.get(name, ClassDetections.empty())
        det_image = _image_indices(dets.image_ids, index, f"detections of class {name!r}")
        _, outcome = match_detections(
            det_image,
            dets.scores,
            dets.boxes,
            all_boxes[mine],
            difficult,
            gt_start,
            gt_count,
            iou_threshold,
        )
        recall, precision = precision_recall(outcome, npos)
        if npos == 0:
            ap = None
            notes.append(
                f"class {name!r} has no non-difficult ground truth in split {dataset.split!r}: "
                "AP undefined (the devkit gives NaN), left out of the mAP"
            )
        else:
            ap = ap_of(recall, precision)
        results.append(
            ClassResult(
                name=name,
                ap=ap,
                npos=npos,
                detections=len(dets),
                true_positives=int((outcome == 1).sum()),
                false_positives=int((outcome == 0).sum()),
                difficult_matches=int((outcome == -1).sum()),
                recall=recall,
                precision=precision,
            )
        )
    return VocEvaluation(metric=metric, split=dataset.split, results=results, notes=notes)
