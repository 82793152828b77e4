"""Tests of ``sppdet.detector.evaluation.voc``.

VOC evaluation: each devkit rule on a hand-computed case, plus a literal devkit port.
"""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from sppdet.detector.core.errors import SppdetError
from sppdet.detector.data.records import Dataset, ImageRecord
from sppdet.detector.evaluation import ap as ev
from sppdet.detector.evaluation.ap import paired_iou
from sppdet.detector.evaluation.voc import ClassDetections, evaluate_voc
from tests.detector.evaluation.shared import GT, dets

# ----------------------------------------------------------------------------- helpers


def make_dataset(images: dict[str, list[tuple]], classes=("a",), split="test") -> Dataset:
    """IMAGES: id -> [(label, (x1, y1, x2, y2) 0-based, difficult), ...]; images are 200x200."""
    records = []
    for image_id, objects in images.items():
        records.append(
            ImageRecord(
                image_id=image_id,
                path=Path(f"{image_id}.jpg"),
                width=200,
                height=200,
                boxes=np.array([o[1] for o in objects], np.float32).reshape(-1, 4),
                labels=np.array([o[0] for o in objects], np.int64),
                difficult=np.array([o[2] for o in objects], bool),
            )
        )
    return Dataset(name="hand", split=split, classes=tuple(classes), records=records)


def ap07_exact(outcomes: list[int], npos: int) -> Fraction:
    """11-point AP in exact rational arithmetic from the TP(1)/FP(0) sequence in score order."""
    tp = fp = 0
    points = []
    for o in outcomes:
        tp += o == 1
        fp += o == 0
        points.append((Fraction(tp, npos), Fraction(tp, tp + fp)))
    total = Fraction(0)
    for k in range(11):
        reached = [p for r, p in points if r >= Fraction(k, 10)]
        total += max(reached) if reached else 0
    return total / 11


FAR = (150, 150, 170, 170)  # overlaps nothing near the origin


# ----------------------------------------------------------------------------- IoU 0.5


@pytest.mark.parametrize(
    ("box", "iou", "ap"),
    [
        ((0, 0, 9, 4), 0.5, 1.0),  # 50 px inside a 100 px box: exactly 0.5 with +1 areas
        ((0, 0, 19, 9), 0.5, 1.0),  # 200 px box containing the 100 px box: 100/200
        ((0, 0, 9, 3), 0.4, 0.0),  # 40/100
        ((5, 0, 14, 9), 50 / 150, 0.0),  # half overlap each way: 50 / (100 + 100 - 50)
    ],
)
def test_iou_exactly_half_is_a_match_plus_one_convention(box, iou, ap):
    assert paired_iou(np.array([box], float), np.array([GT], float))[0] == iou
    result = evaluate_voc(make_dataset({"i": [(0, GT, False)]}), {"a": dets([("i", 0.9, box)])})
    assert result.results[0].ap == pytest.approx(ap, abs=1e-12)


# ----------------------------------------------------------------------------- ties


def _tie_case(tp_first: bool) -> tuple[Dataset, ClassDetections, list[int]]:
    """40 images, one GT each; every detection scores 1.0; per image one FP and one TP."""
    images, rows, outcomes = {}, [], []
    for n in range(40):
        image_id = f"{n:03d}"
        images[image_id] = [(0, GT, False)]
        pair = [(image_id, 1.0, GT), (image_id, 1.0, FAR)]
        rows += pair if tp_first else pair[::-1]
        outcomes += [1, 0] if tp_first else [0, 1]
    return make_dataset(images), dets(rows), outcomes


@pytest.mark.parametrize("tp_first", [True, False])
def test_score_ties_keep_file_order(tp_first):
    dataset, detections, outcomes = _tie_case(tp_first)
    result = evaluate_voc(dataset, {"a": detections}).results[0]
    assert result.ap == pytest.approx(float(ap07_exact(outcomes, 40)), abs=1e-12)


def test_tie_order_changes_the_ap():
    # The two file orders of the test above must score differently, or the test proves nothing.
    assert ap07_exact([1, 0] * 40, 40) != ap07_exact([0, 1] * 40, 40)
    order = np.argsort(-np.ones(80), kind="stable")
    assert (order == np.arange(80)).all()


# ----------------------------------------------------------------------------- k/10 thresholds


def test_recall_exactly_03_06_07_reaches_the_threshold():
    # 10 GT in 10 images; TP TP TP FP FP FP TP TP TP FP FP FP TP: recall hits 0.3, 0.6, 0.7.
    pattern = [1, 1, 1, 0, 0, 0, 1, 1, 1, 0, 0, 0, 1]
    images = {f"g{n}": [(0, GT, False)] for n in range(10)}
    rows, gt_used = [], 0
    for rank, o in enumerate(pattern):
        image_id = f"g{gt_used}"
        gt_used += o
        rows.append((image_id, 1.0 - rank / 100, GT if o else FAR))
    result = evaluate_voc(make_dataset(images), {"a": dets(rows)}).results[0]
    expected = (4 + 3 * Fraction(2, 3) + Fraction(7, 13)) / 11  # worked out by hand
    assert ap07_exact(pattern, 10) == expected
    assert result.ap == pytest.approx(float(expected), abs=1e-12)
    assert result.recall[2] == 0.3 and result.recall[8] == 0.6 and result.recall[12] == 0.7
    # The popular np.arange(0, 1.1, 0.1) thresholds miss all three recall levels.
    trap = sum(
        (result.precision[result.recall >= t].max() if (result.recall >= t).any() else 0) / 11
        for t in np.arange(0, 1.1, 0.1)
    )
    assert trap == pytest.approx(float((3 + 3 * Fraction(2, 3) + Fraction(7, 13)) / 11))
    assert trap < result.ap - 0.05


def test_voc2010_all_point_ap_hand_computed():
    pattern = [1, 1, 1, 0, 0, 0, 1, 1, 1, 0, 0, 0, 1]
    images = {f"g{n}": [(0, GT, False)] for n in range(10)}
    rows, gt_used = [], 0
    for rank, o in enumerate(pattern):
        rows.append((f"g{gt_used}", 1.0 - rank / 100, GT if o else FAR))
        gt_used += o
    result = evaluate_voc(make_dataset(images), {"a": dets(rows)}, metric="voc2010")
    # Envelope: 1 up to recall 0.3, then 6/9 up to 0.6, then 7/13 up to 0.7, then 0.
    expected = 0.3 * 1 + 0.3 * (6 / 9) + 0.1 * (7 / 13)
    assert result.results[0].ap == pytest.approx(expected, abs=1e-12)


# ----------------------------------------------------------------------------- difficult


def test_match_to_difficult_box_is_neither_tp_nor_fp():
    other = (50, 50, 59, 59)
    dataset = make_dataset({"i": [(0, GT, False), (0, other, True)]})
    rows = [("i", 0.9, other), ("i", 0.8, GT), ("i", 0.7, FAR)]
    r = evaluate_voc(dataset, {"a": dets(rows)}).results[0]
    assert (r.npos, r.true_positives, r.false_positives, r.difficult_matches) == (1, 1, 1, 1)
    # Sequence without the ignored detection: TP, FP -> precision 1 at recall 1.
    assert r.ap == pytest.approx(1.0, abs=1e-12)


def test_best_box_difficult_wins_over_a_weaker_normal_match():
    # The detection overlaps the difficult box best (IoU 1) and the normal one at 0.8: ignored.
    normal = (0, 0, 9, 11)  # 120 px containing GT: IoU with GT = 100/120
    dataset = make_dataset({"i": [(0, normal, False), (0, GT, True)]})
    r = evaluate_voc(dataset, {"a": dets([("i", 0.9, GT)])}).results[0]
    assert (r.true_positives, r.false_positives, r.difficult_matches) == (0, 0, 1)
    assert r.ap == 0.0


def test_all_detections_on_difficult_boxes_score_zero():
    # The devkit would give NaN here (0/0 precision for every entry); we report AP 0.
    dataset = make_dataset({"i": [(0, GT, True), (0, (50, 50, 59, 59), False)]})
    r = evaluate_voc(dataset, {"a": dets([("i", 0.9, GT)])}).results[0]
    assert r.ap == 0.0 and r.npos == 1


@pytest.mark.parametrize("first_difficult", [True, False])
def test_equal_iou_goes_to_the_first_listed_box(first_difficult):
    # Two identical annotations, one difficult: the devkit's strict '>' keeps the first.
    dataset = make_dataset({"i": [(0, GT, first_difficult), (0, GT, not first_difficult)]})
    r = evaluate_voc(dataset, {"a": dets([("i", 0.9, GT)])}).results[0]
    assert r.difficult_matches == int(first_difficult)
    assert r.true_positives == int(not first_difficult)


# ----------------------------------------------------------------------------- duplicates


def test_duplicate_detection_is_false_positive():
    b = (30, 30, 39, 39)
    dataset = make_dataset({"i": [(0, GT, False), (0, b, False)]})
    rows = [("i", 0.9, GT), ("i", 0.8, GT), ("i", 0.7, b)]
    r = evaluate_voc(dataset, {"a": dets(rows)}).results[0]
    assert (r.true_positives, r.false_positives) == (2, 1)
    assert r.ap == pytest.approx(float(ap07_exact([1, 0, 1], 2)), abs=1e-12)
    assert ap07_exact([1, 0, 1], 2) == Fraction(28, 33)


def test_best_box_already_taken_is_false_positive_even_if_another_is_free():
    a, b = (0, 0, 9, 9), (0, 2, 9, 11)  # IoU(a, b) = 80 / 120
    dataset = make_dataset({"i": [(0, a, False), (0, b, False)]})
    second = (0, 0, 9, 10)  # IoU 100/110 with a (taken by the first detection), 90/120 with b
    rows = [("i", 0.9, a), ("i", 0.8, second)]
    r = evaluate_voc(dataset, {"a": dets(rows)}).results[0]
    ious = paired_iou(np.array([second] * 2, float), np.array([a, b], float)).tolist()
    assert ious == [100 / 110, 90 / 120]
    assert (r.true_positives, r.false_positives) == (1, 1)


# ----------------------------------------------------------------------------- images / classes


def test_images_without_ground_truth():
    dataset = make_dataset({"empty1": [], "i": [(0, GT, False)], "empty2": []})
    rows = [("empty1", 0.95, GT), ("i", 0.9, GT), ("empty2", 0.5, GT)]
    r = evaluate_voc(dataset, {"a": dets(rows)}).results[0]
    assert (r.true_positives, r.false_positives) == (1, 2)
    assert r.ap == pytest.approx(float(ap07_exact([0, 1, 0], 1)), abs=1e-12)
    assert r.ap == pytest.approx(0.5, abs=1e-12)


def test_class_without_detections_scores_zero_and_counts_in_the_map():
    dataset = make_dataset({"i": [(0, GT, False), (1, GT, False)]}, classes=("a", "b"))
    result = evaluate_voc(dataset, {"a": dets([("i", 0.9, GT)])})
    assert [r.ap for r in result.results] == [pytest.approx(1.0), 0.0]
    assert result.map == pytest.approx(0.5)


def test_class_without_positives_is_reported_and_left_out_of_the_map():
    dataset = make_dataset({"i": [(0, GT, False), (1, FAR, True)]}, classes=("a", "b"))
    result = evaluate_voc(dataset, {"a": dets([("i", 0.9, GT)]), "b": dets([("i", 0.3, GT)])})
    assert result.results[1].ap is None and result.results[1].npos == 0
    assert result.map == pytest.approx(1.0)
    assert any("'b'" in note and "mAP" in note for note in result.notes)
    assert result.to_json()["ap"]["b"] is None


def test_unknown_image_id_in_detections_is_an_error():
    dataset = make_dataset({"i": [(0, GT, False)]})
    with pytest.raises(SppdetError, match="'nope' is not in the evaluated split"):
        evaluate_voc(dataset, {"a": dets([("nope", 0.9, GT)])})


def test_duplicate_image_in_split_is_an_error():
    dataset = make_dataset({"i": [(0, GT, False)]})
    dataset.records.append(dataset.records[0])
    with pytest.raises(SppdetError, match="lists image 'i' twice"):
        evaluate_voc(dataset, {})


def test_unknown_metric_is_an_error():
    with pytest.raises(SppdetError, match="unknown VOC metric"):
        evaluate_voc(make_dataset({"i": []}), {}, metric="voc2012")


# ----------------------------------------------------------------------------- devkit port


def devkit_voc(gt, ids, confidence, boxes, use_07=True, minoverlap=0.5):
    """A literal transcription of VOCevaldet.m (+ VOCap.m), loop by loop, in plain Python.

    GT: image id -> (list of boxes, list of difficult flags). MATLAB's max skips NaN (0/0
    precision before the first TP/FP) and returns NaN when every element is NaN.
    """
    npos = sum(not d for _, diffs in gt.values() for d in diffs)
    det = {i: [False] * len(b) for i, (b, _) in gt.items()}
    si = sorted(range(len(confidence)), key=lambda d: -confidence[d])  # MATLAB sort is stable
    nd = len(si)
    tp, fp = [0] * nd, [0] * nd
    for d in range(nd):
        i = ids[si[d]]
        bb = boxes[si[d]]
        ovmax, jmax = -math.inf, None
        for j, bbgt in enumerate(gt[i][0]):
            bi = [
                max(bb[0], bbgt[0]),
                max(bb[1], bbgt[1]),
                min(bb[2], bbgt[2]),
                min(bb[3], bbgt[3]),
            ]
            iw = bi[2] - bi[0] + 1
            ih = bi[3] - bi[1] + 1
            if iw > 0 and ih > 0:
                ua = (
                    (bb[2] - bb[0] + 1) * (bb[3] - bb[1] + 1)
                    + (bbgt[2] - bbgt[0] + 1) * (bbgt[3] - bbgt[1] + 1)
                    - iw * ih
                )
                ov = iw * ih / ua
                if ov > ovmax:
                    ovmax, jmax = ov, j
        if ovmax >= minoverlap:
            if not gt[i][1][jmax]:
                if not det[i][jmax]:
                    tp[d] = 1
                    det[i][jmax] = True
                else:
                    fp[d] = 1
        else:
            fp[d] = 1
    ctp, cfp, rec, prec = 0, 0, [], []
    for d in range(nd):
        ctp += tp[d]
        cfp += fp[d]
        rec.append(ctp / npos)
        prec.append(ctp / (cfp + ctp) if cfp + ctp else math.nan)

    def matlab_max(values):
        real = [v for v in values if not math.isnan(v)]
        return max(real) if real else math.nan

    if use_07:
        ap = 0.0
        for t in [k / 10 for k in range(11)]:
            sel = [p for r, p in zip(rec, prec, strict=True) if r >= t]
            p = matlab_max(sel) if sel else 0.0
            ap = ap + p / 11
        return ap
    mrec = [0.0, *rec, 1.0]
    mpre = [0.0, *prec, 0.0]
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = matlab_max([mpre[i], mpre[i + 1]])
    return sum(
        (mrec[i] - mrec[i - 1]) * mpre[i] for i in range(1, len(mrec)) if mrec[i] != mrec[i - 1]
    )


def random_case(seed: int):
    rng = np.random.default_rng(seed)
    images, gt = {}, {}
    rows = []
    for n in range(int(rng.integers(5, 25))):
        image_id = f"im{n}"
        k = int(rng.integers(0, 6))
        xy = rng.integers(0, 120, (k, 2))
        wh = rng.integers(5, 60, (k, 2))
        gt_boxes = np.concatenate([xy, xy + wh], axis=1).astype(float)
        difficult = rng.random(k) < 0.3
        images[image_id] = [
            (0, tuple(b), bool(d)) for b, d in zip(gt_boxes, difficult, strict=True)
        ]
        gt[image_id] = ([tuple(b) for b in gt_boxes], difficult.tolist())
        for b in gt_boxes:
            for _ in range(int(rng.integers(0, 3))):  # 0-2 detections per box, some exact copies
                jitter = rng.integers(-4, 5, 4) * (rng.random() < 0.7)
                rows.append((image_id, b + jitter))
        for _ in range(int(rng.integers(0, 3))):
            xy = rng.integers(0, 150, 2)
            rows.append((image_id, np.concatenate([xy, xy + rng.integers(3, 50, 2)]).astype(float)))
    order = rng.permutation(len(rows))
    rows = [rows[i] for i in order]
    scores = rng.integers(0, 6, len(rows)) / 5  # six score levels: many ties
    return (
        make_dataset(images),
        gt,
        [r[0] for r in rows],
        scores.tolist(),
        [tuple(r[1]) for r in rows],
    )


@pytest.mark.parametrize("use_07", [True, False])
def test_matches_literal_devkit_port_on_random_data(use_07):
    compared = 0
    for seed in range(60):
        dataset, gt, ids, scores, boxes = random_case(seed)
        if not any(not d for _, diffs in gt.values() for d in diffs):
            continue
        detections = {"a": ClassDetections(ids, scores, boxes) if ids else ClassDetections.empty()}
        ours = evaluate_voc(dataset, detections, "voc2007" if use_07 else "voc2010").results[0].ap
        reference = devkit_voc(gt, ids, scores, boxes, use_07=use_07)
        if math.isnan(reference):  # every detection on a difficult box: documented AP 0
            assert ours == 0.0
        elif use_07:
            assert ours == reference, seed  # same operations in the same order: bit-exact
        else:
            assert ours == pytest.approx(reference, rel=1e-12, abs=1e-15), seed
        compared += 1
    assert compared > 40


def test_chunked_pair_blocks_give_the_same_matches(monkeypatch):
    dataset, gt, ids, scores, boxes = random_case(3)
    detections = {"a": ClassDetections(ids, scores, boxes)}
    whole = evaluate_voc(dataset, detections).results[0]
    monkeypatch.setattr(ev, "_PAIR_CHUNK", 5)
    chunked = evaluate_voc(dataset, detections).results[0]
    assert (whole.true_positives, whole.false_positives) == (
        chunked.true_positives,
        chunked.false_positives,
    )
    assert whole.ap == chunked.ap
