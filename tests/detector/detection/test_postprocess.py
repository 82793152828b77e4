"""Threshold, per-class NMS, top-k, the split's cap, NMS on the regressed boxes and model
combination, against per-class references."""

from __future__ import annotations

import numpy as np

from sppdet.detector.core.boxes import iou_matrix, nms
from sppdet.detector.core.config import DetectConfig
from sppdet.detector.detection.postprocess import (
    Candidates,
    SplitTopK,
    combine,
    image_detections,
    select,
    suppress_regressed,
    threshold_scores,
)


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


# The pair: windows with IoU 0.25 (devkit +1 areas: 40 x 100 shared of 100 x 100 each,
# 4000 / 16000) that both regress onto one object, their regressed boxes with IoU 9900 / 10100.
PAIR_WINDOWS = np.array([[80, 100, 179, 199], [140, 100, 239, 199]], np.float32)
PAIR_BOXES = np.array([[100, 100, 199, 199], [101, 100, 200, 199]], np.float32)


def test_the_pair_survives_window_nms_and_regressed_nms_keeps_the_better() -> None:
    pair = Candidates(PAIR_WINDOWS, PAIR_BOXES, np.array([1.0, 0.5], np.float32), np.zeros(2, int))
    assert iou_matrix(PAIR_WINDOWS[:1], PAIR_WINDOWS[1:])[0, 0] == 0.25
    assert iou_matrix(PAIR_BOXES[:1], PAIR_BOXES[1:])[0, 0] == 9900 / 10100
    assert len(select(pair, DetectConfig())) == 2  # 0.25 <= 0.3: both windows stay
    kept = image_detections(pair, DetectConfig())
    assert kept.scores.tolist() == [1.0] and kept.boxes.tolist() == [PAIR_BOXES[0].tolist()]
    # Another class's box in the same place is not suppressed: NMS runs per class.
    other = Candidates.concatenate([pair, pair.take(np.array([1]))])
    other.labels[2] = 1
    assert suppress_regressed(other, 0.3).labels.tolist() == [0, 1]


def _split_reference(
    images: list[Candidates], cfg: DetectConfig, limit: int
) -> list[tuple[int, int, float]]:
    """(image, class, score) of every image's ``select`` survivors that score at least their
    class's LIMIT-th best over all images: one cut after everything was scored."""
    found = [(i, int(k), float(s)) for i, c in enumerate(images) for s, k in _pairs(select(c, cfg))]
    kept = []
    for k in {k for _, k, _ in found}:
        scores = sorted((s for _, j, s in found if j == k), reverse=True)
        floor = scores[limit - 1] if len(scores) > limit else -np.inf
        kept += [f for f in found if f[1] == k and f[2] >= floor]
    return sorted(kept)


def _pairs(c: Candidates) -> list[tuple[float, int]]:
    return list(zip(c.scores.tolist(), c.labels.tolist(), strict=True))


def test_split_cap_as_it_rises_equals_one_cut_at_the_end() -> None:
    rng = np.random.default_rng(4)
    cfg = DetectConfig(max_per_class=7)
    images = [_random_candidates(rng, int(rng.integers(0, 60)), 3) for _ in range(40)]
    limit = 23  # small against ~40 x 3 x 7 survivors: the threshold rises many times
    top = SplitTopK(3, limit)
    for i, cands in enumerate(images):
        top.add(i, select(top.admit(cands), cfg))
    assert (top.thresholds > -np.inf).all()  # each class was cut while the split was scored
    got = sorted((i, int(k), float(s)) for i, c in top.result() for s, k in _pairs(c))
    want = _split_reference(images, cfg, limit)
    assert got == want
    counts = np.bincount([k for _, k, _ in got], minlength=3)
    assert counts.tolist() == [limit] * 3  # no tied scores here: exactly the limit per class


def test_split_cap_above_the_detections_keeps_them_all() -> None:
    rng = np.random.default_rng(5)
    images = [_random_candidates(rng, 30, 2) for _ in range(5)]
    top = SplitTopK(2, 10_000)
    for i, cands in enumerate(images):
        top.add(i, select(top.admit(cands), DetectConfig()))
    result = top.result()
    assert [i for i, _ in result] == [i for i, c in enumerate(images) if len(c)]
    for i, c in result:
        assert _pairs(c) == _pairs(select(images[i], DetectConfig()))


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


def test_combination_of_the_pair_from_two_models_writes_one() -> None:
    a = Candidates(PAIR_WINDOWS[:1], PAIR_BOXES[:1], np.array([1.0], np.float32), np.zeros(1, int))
    b = Candidates(PAIR_WINDOWS[1:], PAIR_BOXES[1:], np.array([0.5], np.float32), np.zeros(1, int))
    out = combine([a, b], DetectConfig())
    assert out.scores.tolist() == [1.0] and out.boxes.tolist() == [PAIR_BOXES[0].tolist()]
