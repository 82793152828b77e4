"""Threshold, per-class NMS, top-k and model combination against a per-class reference."""

from __future__ import annotations

import numpy as np

from sppdet.detector.core.boxes import nms
from sppdet.detector.core.config import DetectConfig
from sppdet.detector.detection.postprocess import Candidates, combine, select, threshold_scores


def _random_candidates(rng: np.random.Generator, n: int, k: int) -> Candidates:
    xy = rng.integers(0, 80, size=(n, 2))
    windows = np.concatenate([xy, xy + rng.integers(5, 40, size=(n, 2))], 1).astype(np.float32)
    scores = rng.normal(size=(n, k)).astype(np.float32)
    w, labels = threshold_scores(scores, -1.5)
    return Candidates(windows[w], windows[w] + 1, scores[w, labels], labels)


def _reference(c: Candidates, cfg: DetectConfig) -> list[tuple[int, float]]:
    out = []
    for k in np.unique(c.labels):
        idx = np.nonzero(c.labels == k)[0]
        kept = idx[nms(c.windows[idx], c.scores[idx], cfg.nms_iou)][: cfg.max_per_class]
        out += [(int(k), float(s)) for s in c.scores[kept]]
    return out


def test_threshold_is_strict() -> None:
    windows, labels = threshold_scores(np.array([[-1.5, -1.4], [0.0, -2.0]]), -1.5)
    assert windows.tolist() == [0, 1] and labels.tolist() == [1, 0]


def test_select_matches_per_class_reference() -> None:
    rng = np.random.default_rng(0)
    cands = _random_candidates(rng, 400, 3)
    cfg = DetectConfig(max_per_class=7)
    got = select(cands, cfg)
    assert list(zip(got.labels.tolist(), got.scores.tolist(), strict=True)) == _reference(
        cands, cfg
    )
    # Survivors report their regressed box, not the window.
    np.testing.assert_array_equal(got.boxes, got.windows + 1)


def test_combine_is_nms_over_the_union() -> None:
    a = Candidates(
        windows=np.array([[0, 0, 9, 9], [50, 50, 60, 60]], np.float32),
        boxes=np.array([[1, 1, 9, 9], [50, 50, 61, 61]], np.float32),
        scores=np.array([0.5, 0.2], np.float32),
        labels=np.array([0, 0]),
    )
    b = Candidates(
        windows=np.array([[1, 0, 10, 9], [50, 50, 60, 60]], np.float32),  # overlaps a's first
        boxes=np.array([[2, 2, 10, 10], [49, 49, 60, 60]], np.float32),
        scores=np.array([0.9, 0.1], np.float32),
        labels=np.array([0, 1]),
    )
    out = combine([a, b], DetectConfig())
    # Class 0: b's 0.9 suppresses a's 0.5 (IoU 90/110 > 0.3) and keeps b's regressed box.
    assert out.labels.tolist() == [0, 0, 1]
    assert out.scores.tolist() == [np.float32(0.9), np.float32(0.2), np.float32(0.1)]
    assert out.boxes[0].tolist() == [2, 2, 10, 10]


def test_empty_input() -> None:
    assert len(select(Candidates.empty(), DetectConfig())) == 0
