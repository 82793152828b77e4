"""Proposal recall against the ground truth (difficult boxes excluded), as in Hosang et al.

For each ground-truth box, the best IoU (+1 pixel convention) over the first N proposals of its
image. Recall at t = fraction of boxes whose best IoU >= t. Average recall (AR) = mean recall over
t = 0.50, 0.55, ..., 0.95 (Hosang et al., "What makes for effective detection proposals?",
PAMI 2016). An image recorded as unreadable keeps its ground truth and has no proposals.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sppdet.cache.atomic import read_json, write_json
from sppdet.detector.core.boxes import iou_matrix
from sppdet.detector.core.errors import SppdetError
from sppdet.detector.data.records import Dataset
from sppdet.proposals.stage import timing_report_name
from sppdet.proposals.store import MADE_BY, ProposalStore, open_proposals

if TYPE_CHECKING:
    from sppdet.cache.workdir import WorkDir

AR_THRESHOLDS = np.round(np.arange(0.5, 0.951, 0.05), 2)  # 0.50 ... 0.95, ten values
AR_LIMITS = (100, 300, 1000, 2000)
RECALL_THRESHOLDS = (0.5, 0.7)
REPORT_NAME = "recall.json"


def best_overlaps(gt: np.ndarray, boxes: np.ndarray, limits: tuple[int, ...]) -> np.ndarray:
    """[G, len(LIMITS)]: best IoU of each GT box among the first n boxes, for n in LIMITS."""
    gt = np.asarray(gt, np.float64).reshape(-1, 4)
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    if len(boxes) == 0 or len(gt) == 0:
        return np.zeros((len(gt), len(limits)))
    running = np.maximum.accumulate(iou_matrix(gt, boxes), axis=1)
    return running[:, np.minimum(limits, len(boxes)) - 1]


def recall_at(overlaps: np.ndarray, threshold: float) -> float:
    return float(np.mean(overlaps >= threshold)) if overlaps.size else 0.0


def average_recall(overlaps: np.ndarray) -> float:
    return float(np.mean([recall_at(overlaps, t) for t in AR_THRESHOLDS])) if overlaps.size else 0.0


@dataclass
class RecallReport:
    split: str
    method: str
    images: int
    gt_boxes: int  # non-difficult ground-truth boxes
    mean_boxes: float  # proposals per readable image
    seconds_per_image: float | None  # compute time per image when proposed (None: imported)
    cpu_seconds_per_image: float | None  # the same in CPU time (unaffected by other jobs)
    recall: dict[str, float]  # IoU threshold -> recall with all stored boxes
    average_recall: dict[str, float]  # N -> AR over IoU 0.5:0.95 with the first N boxes
    recall_at_n: dict[str, dict[str, float]]  # N -> IoU threshold -> recall
    bad_images: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def proposal_recall(
    dataset: Dataset,
    store: ProposalStore,
    seconds_per_image: float | None = None,
    cpu_seconds_per_image: float | None = None,
) -> RecallReport:
    """Recall figures of STORE's proposals against DATASET's ground truth."""
    stored = set(store.image_ids)
    missing = [r.image_id for r in dataset.records if r.image_id not in stored]
    if missing:
        raise SppdetError(
            f"{store.root}: the proposals store lacks {len(missing)} images of split "
            f"{dataset.split!r} (e.g. {missing[0]!r}); rerun `{MADE_BY}` on this split"
        )
    limits = (*AR_LIMITS, np.iinfo(np.int32).max)  # the last column: all stored boxes
    overlaps, counts, bad = [], [], 0
    for record in dataset.records:
        if store.attrs(record.image_id).get("bad", False):
            bad += 1
            boxes = np.zeros((0, 4), np.float32)
        else:
            boxes = store.boxes(record.image_id)
            counts.append(len(boxes))
        overlaps.append(best_overlaps(record.boxes[~record.difficult], boxes, limits))
    best = np.concatenate(overlaps) if overlaps else np.zeros((0, len(limits)))
    return RecallReport(
        split=dataset.split,
        method=str(store.params.get("method", "?")),
        images=len(dataset.records),
        gt_boxes=len(best),
        mean_boxes=float(np.mean(counts)) if counts else 0.0,
        seconds_per_image=seconds_per_image,
        cpu_seconds_per_image=cpu_seconds_per_image,
        recall={f"{t:.1f}": recall_at(best[:, -1], t) for t in RECALL_THRESHOLDS},
        average_recall={str(n): average_recall(best[:, i]) for i, n in enumerate(AR_LIMITS)},
        recall_at_n={
            str(n): {f"{t:.1f}": recall_at(best[:, i], t) for t in RECALL_THRESHOLDS}
            for i, n in enumerate(AR_LIMITS)
        },
        bad_images=bad,
    )


def _stored_seconds(work: WorkDir, split: str, fingerprint: str) -> tuple[float | None, ...]:
    """(seconds, CPU seconds) per image recorded by `sppdet propose` for this very store."""
    path = work.report(timing_report_name(split))
    report = read_json(path) if path.is_file() else {}
    if report.get("fingerprint") != fingerprint:
        return None, None
    return report.get("seconds_per_image"), report.get("cpu_seconds_per_image")


def measure_recall(
    dataset: Dataset, work: WorkDir, json_path: str | Path | None = None
) -> RecallReport:
    """The `propose-recall` stage: recall of WORK's proposals for DATASET's split.

    Written to WORK/reports/recall.json (one entry per split) and, if given, to JSON_PATH.
    """
    with open_proposals(work, dataset.split) as store:
        seconds = _stored_seconds(work, dataset.split, store.fingerprint)
        report = proposal_recall(dataset, store, *seconds)
    report_path = work.report(REPORT_NAME)
    merged = read_json(report_path) if report_path.is_file() else {}
    merged = merged if isinstance(merged, dict) else {}
    merged[dataset.split] = report.to_json()
    write_json(report_path, merged)
    if json_path is not None:
        write_json(json_path, report.to_json())
    return report
