"""Detection scoring: PASCAL VOC AP with the official devkit's semantics, and COCO AP.

VOC (``VOCevaldet.m`` of the VOC 2007 devkit, SPEC.md "PASCAL VOC 2007 evaluation"):
- IoU with the +1 pixel convention, computed with the devkit's operations in the devkit's order.
- A class's detections are sorted by descending score, stable: ties keep their input order.
- A detection is matched to the ground-truth box of highest IoU in its image (the first such box
  on a tie); the match counts when IoU >= 0.5 (inclusive).
- Matched to a difficult box: neither TP nor FP. Difficult boxes are not counted in npos.
- Matched to a box already taken by a higher-scored detection: FP, even when another box with
  IoU >= 0.5 is free (the devkit looks at the best box only).
- VOC 2007 AP: the mean over t = k/10, k = 0..10, of the highest precision at recall >= t (0 when
  recall never reaches t), summed in the devkit's order (so a perfect class scores
  1.0000000000000002, as in MATLAB). VOC 2010 AP: area under the monotone precision envelope.
  Note: MATLAB's ``0:0.1:1`` makes the fourth threshold 3*0.1 = 0.30000000000000004, so the
  MATLAB devkit itself skips a recall of exactly 3/10 at t = 0.3. SPEC.md fixes t = k/10, which
  is followed here; the two differ only when recall is exactly 0.3 (npos a multiple of 10) and
  the precision there beats every later one.
- A class with npos > 0 scores by the rules above; without detections its AP is 0.
  A class with npos == 0 has no defined AP (the devkit divides by zero and reports NaN): its AP is
  None, it is left out of the mAP, and the evaluation notes say so.

Detections matched to difficult boxes are dropped from the precision/recall sequence. That gives
exactly the devkit's AP: such an entry repeats the previous (recall, precision) pair, or is 0/0 =
NaN before the first TP/FP, which MATLAB's ``max`` skips. One exception: when every detection of
a class lands on a difficult box, MATLAB's max over all-NaN makes the devkit's VOC07 AP NaN;
here it is 0 (no true positive).

Matching is vectorised per class: every (detection, box of the same image) pair gets its IoU in
one pass, each detection keeps its best box, and a detection is a TP when it is the first (in score
order) to claim a non-difficult box. This is the devkit's greedy loop, because the best box of a
detection does not depend on earlier matches.

Results files (``<comp>_det_<split>_<class>.txt``, one line ``<image_id> <score> <x1> <y1> <x2>
<y2>`` per detection, 1-based pixels) are read and written here; in memory boxes are 0-based.
Subtracting 1 from a 1-based coordinate >= 1 is exact in binary floating point, so IoUs computed
on 0-based boxes equal the devkit's bit for bit.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sppdet.cache.atomic import atomic_output, write_json
from sppdet.detector.config import EvalConfig
from sppdet.detector.data import Dataset, load_dataset
from sppdet.detector.errors import SppdetError

RESULTS_COMP = "comp4"  # VOC competition 4: training data of one's own choosing
VOC07_THRESHOLDS = np.arange(11) / 10  # exactly k/10; np.arange(0, 1.1, 0.1) misses 0.3, 0.6, 0.7
METRICS = ("voc2007", "voc2010")
_PAIR_CHUNK = 4_000_000  # (detection, box) pairs per IoU block: bounds memory on crowded images


# ------------------------------------------------------------------------------ detections


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


# ------------------------------------------------------------------------------ AP formulas


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


# ------------------------------------------------------------------------------ matching


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


# ------------------------------------------------------------------------------ VOC evaluation


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


# ------------------------------------------------------------------------------ results files


def results_file(folder: str | Path, split: str, name: str, comp: str = RESULTS_COMP) -> Path:
    return Path(folder) / f"{comp}_det_{split}_{name}.txt"


def write_voc_results(
    folder: str | Path,
    split: str,
    classes: Sequence[str],
    detections: Detections,
    comp: str = RESULTS_COMP,
) -> list[Path]:
    """Write one results file per class (empty when it has no detections), 1-based boxes.

    Lines keep the detections' order (it decides score ties) and numbers are written in
    shortest round-trip form, so reading a file back gives the same scores and ties.
    """
    paths = []
    for name in classes:
        dets = detections.get(name, ClassDetections.empty())
        rows = zip(
            dets.image_ids.tolist(), dets.scores.tolist(), (dets.boxes + 1).tolist(), strict=True
        )
        text = "".join(f"{i} {s!r} {b[0]!r} {b[1]!r} {b[2]!r} {b[3]!r}\n" for i, s, b in rows)
        path = results_file(folder, split, name, comp)
        with atomic_output(path) as tmp:
            tmp.write_text(text)
        paths.append(path)
    return paths


def _diagnose_results_lines(path: Path, lines: list[str]) -> None:
    """Raise the SppdetError naming the first malformed line of a results file."""
    for n, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 6:
            raise SppdetError(
                f"{path}:{n}: expected 6 fields '<image_id> <score> <x1> <y1> <x2> <y2>', "
                f"found {len(fields)}"
            )
        for what, text in zip(("score", "x1", "y1", "x2", "y2"), fields[1:], strict=True):
            try:
                value = float(text)
            except ValueError:
                raise SppdetError(f"{path}:{n}: {what} {text!r} is not a number") from None
            if not math.isfinite(value):
                raise SppdetError(f"{path}:{n}: {what} {text!r} is not finite")


def _parse_results_file(path: Path, known_ids: Collection[str] | None) -> ClassDetections:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise SppdetError(f"{path}: cannot read results file ({exc})") from None
    if not text.strip():
        return ClassDetections.empty()
    lines = text.splitlines()
    # numpy's C parser reads 100k lines in ~0.1 s; a line it rejects is diagnosed in Python.
    width = max(map(len, lines))
    dtype = np.dtype([("id", f"U{width}"), ("values", np.float64, (5,))])
    try:
        table = np.loadtxt(io.StringIO(text), dtype=dtype, comments=None, ndmin=1)
    except ValueError as exc:
        _diagnose_results_lines(path, lines)
        raise SppdetError(f"{path}: not a VOC results file ({exc})") from None
    numbers, image_ids = table["values"], table["id"]
    if not np.isfinite(numbers).all():
        _diagnose_results_lines(path, lines)
    if known_ids is not None:
        unknown = [u for u in np.unique(image_ids).tolist() if u not in known_ids]
        if unknown:
            n = next(n for n, line in enumerate(lines, 1) if line.split()[:1] == [unknown[0]])
            raise SppdetError(
                f"{path}:{n}: image id {unknown[0]!r} is not in the evaluated split; check "
                "--split and --data"
            )
    return ClassDetections(image_ids, numbers[:, 0], numbers[:, 1:] - 1)


@dataclass
class VocResults:
    detections: dict[str, ClassDetections]
    files: dict[str, Path]  # class -> file read
    missing: list[str]  # classes without a file (no detections)
    ignored: list[Path]  # files of other classes


def read_voc_results(
    folder: str | Path,
    split: str,
    classes: Sequence[str],
    image_ids: Collection[str] | None = None,
) -> VocResults:
    """Read ``*_det_<split>_<class>.txt`` from FOLDER for each of CLASSES (boxes -> 0-based).

    An image id outside IMAGE_IDS is an error, as in the devkit. A class without a file has no
    detections; a file for a class outside CLASSES is reported and skipped.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise SppdetError(f"{folder}: detections folder not found; pass --detections the folder")
    pattern = re.compile(rf"^(?P<comp>.+)_det_{re.escape(split)}_(?P<cls>.+)\.txt$")
    found: dict[str, list[Path]] = {}
    for path in sorted(folder.iterdir()):
        match = pattern.match(path.name)
        if match and path.is_file():
            found.setdefault(match["cls"], []).append(path)
    if not found:
        raise SppdetError(
            f"{folder}: no results files '<comp>_det_{split}_<class>.txt'; check --split and "
            "--detections"
        )
    known = set(image_ids) if image_ids is not None else None
    detections, files, missing = {}, {}, []
    for name in classes:
        paths = found.get(name, [])
        if len(paths) > 1:
            raise SppdetError(
                f"{folder}: several results files for class {name!r} "
                f"({', '.join(p.name for p in paths)}); keep one"
            )
        if not paths:
            missing.append(name)
            continue
        detections[name] = _parse_results_file(paths[0], known)
        files[name] = paths[0]
    ignored = [p for name, paths in found.items() if name not in classes for p in paths]
    return VocResults(detections, files, missing, ignored)


def evaluate_voc_folder(
    data: str | Path,
    split: str,
    detections_dir: str | Path,
    classes: Sequence[str] | None = None,
    metric: str = "voc2007",
    config: EvalConfig | None = None,
) -> VocEvaluation:
    """The ``evaluate --voc2007/--voc2010`` stage: dataset + results folder -> per-class AP."""
    config = config or EvalConfig()
    dataset = load_dataset(data, split, classes)
    results = read_voc_results(
        detections_dir, split, dataset.classes, [r.image_id for r in dataset.records]
    )
    evaluation = evaluate_voc(dataset, results.detections, metric, config.iou_threshold)
    evaluation.notes += [f"no results file for class {name!r}: AP 0" for name in results.missing]
    evaluation.notes += [
        f"{path.name} ignored: its class is not one of the evaluated classes (see --classes)"
        for path in results.ignored
    ]
    return evaluation


# ------------------------------------------------------------------------------ COCO


def dataset_to_coco(dataset: Dataset) -> dict[str, Any]:
    """COCO ground truth for DATASET: image ids 1..N, category ids 1..K in class order.

    A box covering pixels x1..x2 becomes [x1, y1, x2 - x1 + 1, y2 - y1 + 1], so COCO's
    continuous IoU equals the +1 IoU. Difficult boxes become ``iscrowd`` (ignored by COCOeval).
    """
    images, annotations = [], []
    for i, record in enumerate(dataset.records, start=1):
        images.append(
            {
                "id": i,
                "file_name": record.path.name,
                "width": record.width,
                "height": record.height,
                "voc_id": record.image_id,
            }
        )
        wh = record.boxes[:, 2:] - record.boxes[:, :2] + 1
        for box, size, label, difficult in zip(
            record.boxes.tolist(),
            wh.tolist(),
            record.labels.tolist(),
            record.difficult.tolist(),
            strict=True,
        ):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i,
                    "category_id": label + 1,
                    "bbox": [box[0], box[1], size[0], size[1]],
                    "area": size[0] * size[1],
                    "iscrowd": int(difficult),
                }
            )
    categories = [{"id": k, "name": n} for k, n in enumerate(dataset.classes, start=1)]
    return {"images": images, "annotations": annotations, "categories": categories}


def _coco_image_id(image_id: str) -> int | str:
    return int(image_id) if image_id.isdigit() and str(int(image_id)) == image_id else image_id


def write_coco_results(
    path: str | Path,
    dataset: Dataset,
    detections: Detections,
    category_ids: Mapping[str, int] | None = None,
) -> Path:
    """COCO results JSON of DETECTIONS: image ids as in the dataset (int when canonical digits),
    category ids 1..K in class order unless CATEGORY_IDS maps names to ids."""
    category_ids = category_ids or {n: k for k, n in enumerate(dataset.classes, start=1)}
    entries = []
    for name, dets in detections.items():
        wh = dets.boxes[:, 2:] - dets.boxes[:, :2] + 1
        columns = (dets.image_ids.tolist(), dets.scores.tolist(), dets.boxes.tolist(), wh.tolist())
        for image_id, score, box, size in zip(*columns, strict=True):
            entries.append(
                {
                    "image_id": _coco_image_id(image_id),
                    "category_id": category_ids[name],
                    "bbox": [box[0], box[1], size[0], size[1]],
                    "score": score,
                }
            )
    path = Path(path)
    write_json(path, entries)
    return path


@dataclass
class CocoEvaluation:
    stats: list[float]  # COCOeval.stats: AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs..
    ap: dict[str, float | None]  # per class AP@[.5:.95] (None: no ground truth)
    npos: dict[str, int]
    detections: int
    summary: str
    notes: list[str] = field(default_factory=list)
    metric: str = "coco"

    @property
    def map(self) -> float:
        return self.stats[0]

    def to_json(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "ap": dict(self.ap),
            "map": self.stats[0],
            "ap50": self.stats[1],
            "ap75": self.stats[2],
            "stats": list(self.stats),
            "npos": dict(self.npos),
            "detections": self.detections,
            "notes": list(self.notes),
        }


def _quiet_coco(dataset: dict[str, Any]) -> Any:
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _read_coco_results(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise SppdetError(f"{path}: COCO results file not found")
    try:
        entries = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SppdetError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(entries, list):
        raise SppdetError(f"{path}: COCO results must be a JSON list of detections")
    for n, e in enumerate(entries):
        ok = (
            isinstance(e, dict)
            and {"image_id", "category_id", "bbox", "score"} <= e.keys()
            and isinstance(e["bbox"], list)
            and len(e["bbox"]) == 4
            and all(isinstance(v, (int, float)) for v in [*e["bbox"], e["score"]])
            and all(math.isfinite(v) for v in [*e["bbox"], e["score"]])
        )
        if not ok:
            raise SppdetError(
                f"{path}: entry {n} is not {{'image_id', 'category_id', 'bbox': [x, y, w, h], "
                f"'score'}} with finite numbers: {json.dumps(e)[:120]}"
            )
    return entries


def evaluate_coco(
    data: str | Path,
    results_json: str | Path,
    split: str = "test",
    classes: Sequence[str] | None = None,
) -> CocoEvaluation:
    """The ``evaluate --coco`` stage: COCOeval (bbox) of RESULTS_JSON against DATA.

    DATA is a COCO json (used as is, category ids from it) or a VOC tree (converted by
    ``dataset_to_coco``: category ids 1..K in class order; results may name images by their VOC
    id string or, for all-digit ids, by the integer).
    """
    from pycocotools.cocoeval import COCOeval

    results_json = Path(results_json)
    entries = _read_coco_results(results_json)
    data = Path(data)
    dataset = load_dataset(data, split, classes)
    if data.suffix.lower() == ".json":
        gt = json.loads(data.read_text())
        for ann in gt.get("annotations", []):  # COCOeval needs an area; older exports omit it
            ann.setdefault("area", ann["bbox"][2] * ann["bbox"][3])
        id_of = {str(img["id"]): img["id"] for img in gt["images"]}
    else:
        gt = dataset_to_coco(dataset)
        id_of = {img["voc_id"]: img["id"] for img in gt["images"]}
    by_name = {c["name"]: c["id"] for c in gt["categories"]}
    absent = [n for n in dataset.classes if n not in by_name]
    if absent:
        raise SppdetError(f"{data}: no category named {absent[0]!r}; check --classes")
    int_ids: dict[int, list[Any]] = {}
    for key, value in id_of.items():
        if key.isdigit():
            int_ids.setdefault(int(key), []).append(value)
    category_ids = [by_name[n] for n in dataset.classes]
    detections = []
    for n, e in enumerate(entries):
        raw = e["image_id"]
        found = id_of.get(raw) if isinstance(raw, str) else int_ids.get(raw, [None])
        if isinstance(found, list):
            found = found[0] if len(found) == 1 else None
        if found is None:
            raise SppdetError(
                f"{results_json}: entry {n}: image id {raw!r} is not in the dataset; check "
                "--data and --split"
            )
        if e["category_id"] not in category_ids:
            if e["category_id"] in by_name.values():
                continue  # a category left out by --classes
            raise SppdetError(
                f"{results_json}: entry {n}: category_id {e['category_id']!r} is not one of the "
                f"dataset's categories {sorted(by_name.values())}"
            )
        detections.append({**e, "image_id": found})

    gt_coco = _quiet_coco(gt)
    crowd = {a["id"]: bool(a.get("iscrowd", 0)) for a in gt["annotations"]}
    npos = {
        name: sum(not crowd[i] for i in gt_coco.getAnnIds(catIds=[cid]))
        for name, cid in zip(dataset.classes, category_ids, strict=True)
    }
    notes = []
    if not detections:
        notes.append("no detections: every AP is 0")
        ap = {n: (0.0 if npos[n] else None) for n in dataset.classes}
        return CocoEvaluation([0.0] * 12, ap, npos, 0, "", notes)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress and timings
        dt_coco = gt_coco.loadRes(detections)
        evaluator = COCOeval(gt_coco, dt_coco, "bbox")
        evaluator.params.catIds = category_ids
        evaluator.evaluate()
        evaluator.accumulate()
    with contextlib.redirect_stdout(io.StringIO()) as captured:
        evaluator.summarize()
    # precision: [iou thresholds, recall points, categories, area ranges, max dets]
    precision = evaluator.eval["precision"][:, :, :, 0, -1]
    ap = {}
    for k, name in enumerate(dataset.classes):
        valid = precision[:, :, k][precision[:, :, k] > -1]
        ap[name] = float(valid.mean()) if valid.size else None
        if ap[name] is None:
            notes.append(f"class {name!r} has no ground truth: AP undefined, left out of the mAP")
    return CocoEvaluation(
        stats=[float(s) for s in evaluator.stats],
        ap=ap,
        npos=npos,
        detections=len(detections),
        summary=captured.getvalue(),
        notes=notes,
    )
