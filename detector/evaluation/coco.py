"""COCO AP of detections with pycocotools' COCOeval: a dataset as COCO ground truth, detections
as a COCO results JSON, and the ``evaluate --coco`` stage.

Boxes convert between the in-memory 0-based inclusive pixel boxes and COCO's [x, y, w, h] with
w = x2 - x1 + 1, so COCO's continuous IoU equals the +1-pixel IoU of the VOC devkit. Difficult
boxes become ``iscrowd`` annotations, which COCOeval ignores.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sppdet.cache.atomic import write_json
from sppdet.detector.core.errors import SppdetError
from sppdet.detector.data.datasets import load_dataset
from sppdet.detector.data.records import Dataset
from sppdet.detector.evaluation.voc import Detections

COCO_STATS = 12  # length of COCOeval.stats (AP, AP50, AP75, APs, APm, APl, AR1, AR10, ...)


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
    results_json = Path(results_json)
    entries = _read_coco_results(results_json)
    data = Path(data)
    dataset = load_dataset(data, split, classes)
    gt, id_of = _ground_truth(data, dataset)
    by_name = {c["name"]: c["id"] for c in gt["categories"]}
    absent = [n for n in dataset.classes if n not in by_name]
    if absent:
        raise SppdetError(f"{data}: no category named {absent[0]!r}; check --classes")
    category_ids = [by_name[n] for n in dataset.classes]
    detections = _dataset_detections(entries, id_of, by_name, category_ids, results_json)
    gt_coco = _quiet_coco(gt)
    crowd = {a["id"]: bool(a.get("iscrowd", 0)) for a in gt["annotations"]}
    npos = {
        name: sum(not crowd[i] for i in gt_coco.getAnnIds(catIds=[cid]))
        for name, cid in zip(dataset.classes, category_ids, strict=True)
    }
    if not detections:
        ap = {n: (0.0 if npos[n] else None) for n in dataset.classes}
        return CocoEvaluation([0.0] * COCO_STATS, ap, npos, 0, "", ["no detections: every AP is 0"])
    evaluator, summary = _run_cocoeval(gt_coco, detections, category_ids)
    ap, notes = _class_ap(evaluator, dataset.classes)
    return CocoEvaluation(
        stats=[float(s) for s in evaluator.stats],
        ap=ap,
        npos=npos,
        detections=len(detections),
        summary=summary,
        notes=notes,
    )


def _ground_truth(data: Path, dataset: Dataset) -> tuple[dict[str, Any], dict[str, Any]]:
    """The COCO ground truth of DATA, and its image ids by the names results may use for them:
    the id's string (COCO json) or the VOC image id (a VOC tree)."""
    if data.suffix.lower() == ".json":
        gt = json.loads(data.read_text())
        for ann in gt.get("annotations", []):  # COCOeval needs an area; older exports omit it
            ann.setdefault("area", ann["bbox"][2] * ann["bbox"][3])
        return gt, {str(img["id"]): img["id"] for img in gt["images"]}
    gt = dataset_to_coco(dataset)
    return gt, {img["voc_id"]: img["id"] for img in gt["images"]}


def _dataset_detections(
    entries: list[dict[str, Any]],
    id_of: Mapping[str, Any],
    by_name: Mapping[str, int],
    category_ids: Sequence[int],
    path: Path,
) -> list[dict[str, Any]]:
    """ENTRIES with the ground truth's image ids, those of categories left out by --classes
    dropped; an unknown image or category is an error naming the entry."""
    int_ids: dict[int, list[Any]] = {}  # a result may give an all-digit image name as a number
    for key, value in id_of.items():
        if key.isdigit():
            int_ids.setdefault(int(key), []).append(value)
    detections = []
    for n, e in enumerate(entries):
        raw = e["image_id"]
        found = id_of.get(raw) if isinstance(raw, str) else int_ids.get(raw, [None])
        if isinstance(found, list):
            found = found[0] if len(found) == 1 else None
        if found is None:
            raise SppdetError(
                f"{path}: entry {n}: image id {raw!r} is not in the dataset; check "
                "--data and --split"
            )
        if e["category_id"] not in category_ids:
            if e["category_id"] in by_name.values():
                continue  # a category left out by --classes
            raise SppdetError(
                f"{path}: entry {n}: category_id {e['category_id']!r} is not one of the "
                f"dataset's categories {sorted(by_name.values())}"
            )
        detections.append({**e, "image_id": found})
    return detections


def _run_cocoeval(
    gt_coco: Any, detections: list[dict[str, Any]], category_ids: Sequence[int]
) -> tuple[Any, str]:
    """COCOeval (bbox) of DETECTIONS over CATEGORY_IDS, accumulated and summarised; the
    evaluator and its printed summary."""
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress and timings
        dt_coco = gt_coco.loadRes(detections)
        evaluator = COCOeval(gt_coco, dt_coco, "bbox")
        evaluator.params.catIds = category_ids
        evaluator.evaluate()
        evaluator.accumulate()
    with contextlib.redirect_stdout(io.StringIO()) as captured:
        evaluator.summarize()
    return evaluator, captured.getvalue()


def _class_ap(evaluator: Any, classes: Sequence[str]) -> tuple[dict[str, float | None], list[str]]:
    """AP@[.5:.95] of each class (all areas, most detections), None without ground truth; and
    the notes saying which classes have none."""
    # precision: [iou thresholds, recall points, categories, area ranges, max dets]
    precision = evaluator.eval["precision"][:, :, :, 0, -1]
    ap: dict[str, float | None] = {}
    notes = []
    for k, name in enumerate(classes):
        valid = precision[:, :, k][precision[:, :, k] > -1]
        ap[name] = float(valid.mean()) if valid.size else None
        if ap[name] is None:
            notes.append(f"class {name!r} has no ground truth: AP undefined, left out of the mAP")
    return ap, notes
