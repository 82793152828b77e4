"""The PASCAL VOC devkit's numerics (``VOCevaldet.m``, ``VOCap.m`` of the VOC 2007 devkit):
IoU, the matching of one class's detections to ground truth, precision/recall and AP.

- IoU with the +1 pixel convention, computed with the devkit's operations in the devkit's order.
- Detections are sorted by descending score, stable: ties keep their input order.
- A detection is matched to the ground-truth box of highest IoU in its image (the first such box
  on a tie); the match counts when IoU >= the threshold (0.5, inclusive). Matched to a difficult
  box: neither TP nor FP. Matched to a box already taken by a higher-scored detection: FP, even
  when another box with IoU >= 0.5 is free (the devkit looks at the best box only).
- VOC 2007 AP: the mean over t = k/10, k = 0..10, of the highest precision at recall >= t (0 when
  recall never reaches t), summed in the devkit's order (so a perfect class scores
  1.0000000000000002, as in MATLAB). VOC 2010 AP: area under the monotone precision envelope.
  Note: MATLAB's ``0:0.1:1`` makes the fourth threshold 3*0.1 = 0.30000000000000004, so the
  MATLAB devkit itself skips a recall of exactly 3/10 at t = 0.3. SPEC.md fixes t = k/10, which
  is followed here; the two differ only when recall is exactly 0.3 (npos a multiple of 10) and
  the precision there beats every later one.

Matching is vectorised per class: every (detection, box of the same image) pair gets its IoU in
one pass, each detection keeps its best box, and a detection is a TP when it is the first (in score
order) to claim a non-difficult box. This is the devkit's greedy loop, because the best box of a
detection does not depend on earlier matches.

Detections matched to difficult boxes are dropped from the precision/recall sequence. That gives
exactly the devkit's AP: such an entry repeats the previous (recall, precision) pair, or is 0/0 =
NaN before the first TP/FP, which MATLAB's ``max`` skips. One exception: when every detection of
a class lands on a difficult box, MATLAB's max over all-NaN makes the devkit's VOC07 AP NaN;
here it is 0 (no true positive).
"""

from __future__ import annotations

import numpy as np

from sppdet.detector.core.config import EvalConfig

_PAIR_CHUNK = 4_000_000  # (detection, box) pairs per IoU block: bounds memory on crowded images
VOC07_THRESHOLDS = np.arange(11) / 10  # exactly k/10; np.arange(0, 1.1, 0.1) misses 0.3, 0.6, 0.7


def average_precision_voc07(recall: np.ndarray, precision: np.ndarray) -> float:
    """11-point AP: mean over t = k/10 of max precision at recall >= t (0 if none)."""
    ap = 0.0
    for t in VOC07_THRESHOLDS:  # summed in the devkit's order: ap = ap + p/11
        reached = precision[recall >= t]
        ap += (float(reached.max()) if reached.size else 0.0) / 11
    return ap


def average_precision_voc10(recall: np.ndarray, precision: np.ndarray) -> float:
    """All-point AP (VOCap.m): area under the monotone precision envelope."""
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return float(np.sum((mrec[steps] - mrec[steps - 1]) * mpre[steps]))


def paired_iou(det: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """IoU of det[i] with gt[i], as the devkit computes it; -inf where the boxes do not overlap."""
    iw = np.minimum(det[:, 2], gt[:, 2]) - np.maximum(det[:, 0], gt[:, 0]) + 1
    ih = np.minimum(det[:, 3], gt[:, 3]) - np.maximum(det[:, 1], gt[:, 1]) + 1
    inter = iw * ih
    ua = (det[:, 2] - det[:, 0] + 1) * (det[:, 3] - det[:, 1] + 1)
    ua = ua + (gt[:, 2] - gt[:, 0] + 1) * (gt[:, 3] - gt[:, 1] + 1) - inter
    overlap = (iw > 0) & (ih > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(overlap, inter / np.where(overlap, ua, 1.0), -np.inf)


def _best_boxes(
    det_image: np.ndarray,
    det_boxes: np.ndarray,
    gt_boxes: np.ndarray,
    gt_start: np.ndarray,
    gt_count: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Per detection: highest IoU with a box of its image and that box's index (first on a tie).

    Detections whose image has no box get IoU -inf and index -1.
    """
    nd = len(det_image)
    best_iou = np.full(nd, -np.inf)
    best_box = np.full(nd, -1, np.int64)
    counts = gt_count[det_image]
    ends = np.cumsum(counts)
    # Chunk boundaries on detections so each block holds at most _PAIR_CHUNK pairs.
    cuts = np.unique(np.searchsorted(ends, np.arange(0, ends[-1] if nd else 0, _PAIR_CHUNK)))
    bounds = [*cuts.tolist(), nd] if nd else [0]
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=False):
        c = counts[lo:hi]
        total = int(c.sum())
        if total == 0:
            continue
        pair_det = np.repeat(np.arange(lo, hi), c)
        first_pair = np.cumsum(c) - c
        pair_box = np.repeat(gt_start[det_image[lo:hi]] - first_pair, c) + np.arange(total)
        iou = paired_iou(det_boxes[pair_det], gt_boxes[pair_box])
        has = c > 0
        best_iou[lo:hi][has] = np.maximum.reduceat(iou, first_pair[has])
        # The first pair reaching its detection's maximum: the devkit's strict '>' scan.
        at_max = np.flatnonzero(iou == best_iou[pair_det])
        first = at_max[np.r_[True, pair_det[at_max][1:] != pair_det[at_max][:-1]]]
        best_box[pair_det[first]] = pair_box[first]
    return best_iou, best_box


def match_detections(
    det_image: np.ndarray,
    det_scores: np.ndarray,
    det_boxes: np.ndarray,
    gt_boxes: np.ndarray,
    gt_difficult: np.ndarray,
    gt_start: np.ndarray,
    gt_count: np.ndarray,
    iou_threshold: float = EvalConfig.iou_threshold,
) -> tuple[np.ndarray, np.ndarray]:
    """Devkit matching of one class. Returns (order, outcome) over the sorted detections.

    ``order`` is the stable descending-score order; ``outcome[i]`` for detection ``order[i]`` is
    1 (TP), 0 (FP) or -1 (matched to a difficult box: neither). Boxes of image ``j`` are
    ``gt_boxes[gt_start[j] : gt_start[j] + gt_count[j]]``; ``det_image`` indexes images.
    """
    order = np.argsort(-np.asarray(det_scores, np.float64), kind="stable")
    image = np.asarray(det_image, np.int64)[order]
    best_iou, best_box = _best_boxes(
        image, np.asarray(det_boxes, np.float64)[order], gt_boxes, gt_start, gt_count
    )
    hit = best_iou >= iou_threshold
    difficult = np.zeros(len(order), bool)
    difficult[hit] = gt_difficult[best_box[hit]]
    outcome = np.zeros(len(order), np.int8)
    outcome[difficult] = -1
    claims = np.flatnonzero(hit & ~difficult)
    # np.unique's return_index gives the first occurrence: the highest-scored claim of each box.
    _, first = np.unique(best_box[claims], return_index=True)
    outcome[claims[first]] = 1
    return order, outcome


def precision_recall(outcome: np.ndarray, npos: int) -> tuple[np.ndarray, np.ndarray]:
    """Recall and precision after each counted detection (difficult matches dropped)."""
    counted = outcome[outcome >= 0]
    tp = np.cumsum(counted == 1, dtype=np.float64)
    fp = np.cumsum(counted == 0, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return tp / npos, tp / (fp + tp)
