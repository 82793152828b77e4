"""From scored windows to detections: threshold, per-class NMS, top-k, and model combination.

Scoring produces, per image, candidates: (window box, class, score, regressed box) for every
window-class pair scoring above the threshold (-1.5). NMS runs on the window boxes (IoU > 0.3
suppresses, devkit +1 convention: ``core.boxes.nms``); the survivors, at most 100 per class,
report their regressed box, which is the released code's order (regress the boxes kept by NMS).
Model combination (paper §4.4) is the same NMS over the union of two models' candidates, each
survivor keeping its own model's regressed box.
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


def combine(
    models: list[Candidates], cfg: DetectConfig, device: torch.device | str = "cpu"
) -> Candidates:
    """Model combination: NMS over the union of several models' candidates of one image."""
    return select(Candidates.concatenate(models), cfg, device)
