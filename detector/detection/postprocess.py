"""From scored windows to detections, as the released code's ``spp_test.m`` and
``imdb_eval_voc.m`` do it (SPEC.md, Testing).

Scoring produces, per image, candidates: (window box, class, score, regressed box) for every
window-class pair scoring above the threshold (-1.5), the regressed box clipped to the image.
Then, per image and class: NMS on the window boxes (IoU > 0.3 suppresses, devkit +1 convention:
``core.boxes.nms``) and the best 100 (``select``); per class over the whole split, at most
``max_per_split_factor`` (5) x the number of images (``SplitTopK``, the released
``keep_top_k``); and last, NMS at 0.3 again on the regressed boxes of each image and class
(``suppress_regressed``), as ``imdb_eval_voc.m`` does before it writes the results: two windows
that regress onto one object would otherwise both be written, one of them a false positive.
Model combination (paper §4.4) is the same chain over the union of two models' candidates,
each survivor keeping its own model's regressed box.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from sppdet.detector.core.boxes import nms
from sppdet.detector.core.config import DetectConfig


@dataclass
class Candidates:
    """Scored windows of one image; every array has one row per (window, class) pair."""

    windows: np.ndarray  # [M, 4] float32, proposal boxes
    boxes: np.ndarray  # [M, 4] float32, regressed (or equal to windows)
    scores: np.ndarray  # [M] float32
    labels: np.ndarray  # [M] int64

    @classmethod
    def empty(cls) -> Candidates:
        return cls(
            np.zeros((0, 4), np.float32),
            np.zeros((0, 4), np.float32),
            np.zeros(0, np.float32),
            np.zeros(0, np.int64),
        )

    @classmethod
    def concatenate(cls, parts: list[Candidates]) -> Candidates:
        if not parts:
            return cls.empty()
        return cls(
            *(
                np.concatenate([getattr(p, f) for p in parts])
                for f in ("windows", "boxes", "scores", "labels")
            )
        )

    def take(self, index: np.ndarray) -> Candidates:
        return Candidates(
            self.windows[index], self.boxes[index], self.scores[index], self.labels[index]
        )

    def __len__(self) -> int:
        return len(self.scores)


def threshold_scores(scores: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(window index, class) of every entry of SCORES [N, K] above THRESHOLD, window-major."""
    windows, labels = np.nonzero(scores > threshold)
    return windows, labels.astype(np.int64)


def select(
    candidates: Candidates, cfg: DetectConfig, device: torch.device | str = "cpu"
) -> Candidates:
    """Per-class NMS on the window boxes (on DEVICE), then the best ``max_per_class`` of each
    class. One batched call for all classes; the result is sorted by class, then by descending
    score.
    """
    if len(candidates) == 0:
        return candidates
    keep = nms(
        candidates.windows, candidates.scores, cfg.nms_iou, classes=candidates.labels, device=device
    )
    kept = candidates.take(keep)
    # NMS returns descending score; a stable sort by class keeps that order inside a class.
    order = np.argsort(kept.labels, kind="stable")
    kept = kept.take(order)
    rank = np.arange(len(kept)) - np.searchsorted(kept.labels, kept.labels, side="left")
    return kept.take(np.nonzero(rank < cfg.max_per_class)[0])


def suppress_regressed(
    candidates: Candidates, iou: float, device: torch.device | str = "cpu"
) -> Candidates:
    """One image's CANDIDATES kept by NMS at IOU on their regressed boxes, per class
    (``imdb_eval_voc.m``: ``nms(bbox, 0.3)`` before writing), in their order."""
    keep = nms(candidates.boxes, candidates.scores, iou, classes=candidates.labels, device=device)
    return candidates.take(np.sort(keep))


def image_detections(
    candidates: Candidates, cfg: DetectConfig, device: torch.device | str = "cpu"
) -> Candidates:
    """The detections of one image alone (no split to cap): ``select``, then NMS on the
    regressed boxes; sorted by class, then by descending score."""
    return suppress_regressed(select(candidates, cfg, device), cfg.nms_iou, device)


def combine(
    models: list[Candidates], cfg: DetectConfig, device: torch.device | str = "cpu"
) -> Candidates:
    """Model combination of one image: the detections of the union of several models'
    candidates."""
    return image_detections(Candidates.concatenate(models), cfg, device)


PRUNE_AT = 2  # a class's detections are cut back to the split's limit when they reach twice it


class SplitTopK:
    """Per class over a split, at most LIMIT detections: the released ``keep_top_k``.

    As images are added, a class holding ``PRUNE_AT`` x LIMIT detections keeps its best LIMIT
    (score >= the LIMIT-th best, so ties stay) and raises its threshold to that score; ``admit``
    drops an image's candidates below their class's threshold before NMS. A candidate under the
    threshold can only suppress candidates scoring lower still, so admission changes nothing
    that the final cut (``result``) keeps: the result equals one cut over all the detections,
    with memory bounded by about ``PRUNE_AT`` x LIMIT detections per class.
    """

    def __init__(self, num_classes: int, limit: int) -> None:
        self.limit = limit
        self.thresholds = np.full(num_classes, -np.inf)
        self._parts: list[Candidates] = []
        self._images: list[np.ndarray] = []
        self._held = np.zeros(num_classes, np.int64)

    def admit(self, candidates: Candidates) -> Candidates:
        """CANDIDATES scoring at least their class's current threshold."""
        return candidates.take(
            np.nonzero(candidates.scores >= self.thresholds[candidates.labels])[0]
        )

    def add(self, image: int, detections: Candidates) -> None:
        """The DETECTIONS of image number IMAGE (its index in the split)."""
        self._parts.append(detections)
        self._images.append(np.full(len(detections), image, np.int64))
        self._held += np.bincount(detections.labels, minlength=len(self._held))
        if (self._held >= PRUNE_AT * self.limit).any():
            self._cut()

    def result(self) -> list[tuple[int, Candidates]]:
        """The split's detections after the final cut: (image index, its detections) for each
        image with some, in the order added."""
        self._cut()
        held, images = self._parts[0], self._images[0]
        starts = np.flatnonzero(np.diff(images, prepend=-1))
        ends = np.append(starts[1:], len(images))
        spans = zip(starts, ends, strict=True)
        return [(int(images[a]), held.take(np.arange(a, b))) for a, b in spans]

    def _cut(self) -> None:
        held, images = Candidates.concatenate(self._parts), np.concatenate(self._images or [[]])
        for k in np.nonzero(self._held > self.limit)[0]:
            scores = held.scores[held.labels == k]
            # the LIMIT-th best score: np.partition finds it without sorting them all
            self.thresholds[k] = np.partition(scores, len(scores) - self.limit)[-self.limit]
        index = np.nonzero(held.scores >= self.thresholds[held.labels])[0]
        self._parts, self._images = [held.take(index)], [images[index].astype(np.int64)]
        self._held = np.bincount(held.labels[index], minlength=len(self._held))
