"""COCO both ways: a split's ground truth and detections as the COCO JSON files pycocotools reads
(``instances_<split>.json`` and ``coco_results_<split>.json``, written by ``detect``), and COCO
AP of a results JSON with pycocotools' COCOeval (the ``evaluate --coco`` stage).

The two files agree, so ``COCO(gt).loadRes(results)`` and ``COCOeval`` run on them directly:
image ids are integers, the COCO file's own for COCO data and 1..N in split order for a VOC tree
(the ground truth records each id's file name and VOC id); category ids are the COCO file's own,
or 1..K in class order. Boxes convert between the in-memory 0-based inclusive pixel boxes and
COCO's [x, y, w, h] with w = x2 - x1 + 1, so COCO's continuous IoU equals the +1-pixel IoU of the
VOC devkit. Difficult VOC boxes become ``iscrowd`` annotations, which COCOeval ignores.
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

import numpy as np

from sppdet.cache.atomic import write_json
from sppdet.detector.core.errors import SppdetError
from sppdet.detector.data.coco import CocoDataset
from sppdet.detector.data.datasets import load_dataset
from sppdet.detector.data.records import Dataset
from sppdet.detector.evaluation.voc import Detections

COCO_STATS = 12  # length of COCOeval.stats (AP, AP50, AP75, APs, APm, APl, AR1, AR10, ...)
CURVE_IOU = 0.5  # the IoU threshold of the per-class precision-recall curves (AP50's)


def ground_truth_name(split: str) -> str:
    return f"instances_{split}.json"


def results_name(split: str) -> str:
    return f"coco_results_{split}.json"


def coco_image_ids(dataset: Dataset) -> dict[str, int]:
    """Each record's COCO image id: the file's own for COCO data, else 1..N in split order."""
    if isinstance(dataset, CocoDataset):
        return {r.image_id: int(r.image_id) for r in dataset.records}
    return {r.image_id: i for i, r in enumerate(dataset.records, start=1)}


def coco_category_ids(dataset: Dataset) -> dict[str, int]:
    """Each class's COCO category id: the file's own for COCO data, else 1..K in class order."""
    if isinstance(dataset, CocoDataset):
        absent = [n for n in dataset.classes if n not in dataset.category_ids]
        if absent:
            raise SppdetError(
                f"{dataset.source}: no category named {absent[0]!r} ; check --classes"
            )
        return {n: dataset.category_ids[n] for n in dataset.classes}
    return {n: k for k, n in enumerate(dataset.classes, start=1)}


def dataset_to_coco(dataset: Dataset) -> dict[str, Any]:
    """COCO ground truth of DATASET's images and classes, with ``coco_image_ids`` and
    ``coco_category_ids``. For COCO data, the file's own entries (areas, crowds, segmentations
    as they are) of the split's images and classes; for a VOC tree, its boxes, a box covering
    pixels x1..x2 becoming [x1, y1, x2 - x1 + 1, y2 - y1 + 1] (so COCO's continuous IoU equals
    the +1 IoU), difficult boxes ``iscrowd`` (ignored by COCOeval).
    """
    if isinstance(dataset, CocoDataset):
        return _coco_subset(dataset)
    ids = coco_image_ids(dataset)
    images, annotations = [], []
    for record in dataset.records:
        image_id = ids[record.image_id]
        images.append(
            {
                "id": image_id,
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
                    "image_id": image_id,
                    "category_id": label + 1,
                    "bbox": [box[0], box[1], size[0], size[1]],
                    "area": size[0] * size[1],
                    "iscrowd": int(difficult),
                }
            )
    categories = [{"id": k, "name": n} for n, k in coco_category_ids(dataset).items()]
    return {"images": images, "annotations": annotations, "categories": categories}


def _coco_subset(dataset: CocoDataset) -> dict[str, Any]:
    """The entries of DATASET's source file for its images and classes."""
    source = json.loads(dataset.source.read_text())
    images = set(coco_image_ids(dataset).values())
    categories = set(coco_category_ids(dataset).values())
    annotations = []
    for ann in source.get("annotations", []):
        if ann["image_id"] in images and ann["category_id"] in categories:
            # COCOeval needs an area; older exports omit it
            annotations.append({"area": ann["bbox"][2] * ann["bbox"][3], **ann})
    return {
        **{k: v for k, v in source.items() if k not in ("images", "annotations", "categories")},
        "images": [img for img in source["images"] if img["id"] in images],
        "annotations": annotations,
        "categories": [c for c in source["categories"] if c["id"] in categories],
    }


def has_annotations(dataset: Dataset) -> bool:
    """Whether DATASET has ground truth to write: a box in some image."""
    return any(len(r.boxes) for r in dataset.records)


def write_coco_ground_truth(folder: str | Path, dataset: Dataset) -> Path:
    """FOLDER/instances_<split>.json: DATASET's ground truth (``dataset_to_coco``)."""
    path = Path(folder) / ground_truth_name(dataset.split)
    write_json(path, dataset_to_coco(dataset))
    return path


def write_coco_results(
    path: str | Path,
    dataset: Dataset,
    detections: Detections,
    category_ids: Mapping[str, int] | None = None,
) -> Path:
    """COCO results JSON of DETECTIONS: integer image ids (``coco_image_ids``), category ids
    ``coco_category_ids`` unless CATEGORY_IDS maps names to ids."""
    category_ids = category_ids or coco_category_ids(dataset)
    image_ids = coco_image_ids(dataset)
    entries = []
    for name, dets in detections.items():
        wh = dets.boxes[:, 2:] - dets.boxes[:, :2] + 1
        columns = (dets.image_ids.tolist(), dets.scores.tolist(), dets.boxes.tolist(), wh.tolist())
        for image_id, score, box, size in zip(*columns, strict=True):
            entries.append(
                {
                    "image_id": image_ids[image_id],
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
    # per class, at IoU CURVE_IOU over COCO's 101 recall points (None: no ground truth)
    precision: dict[str, np.ndarray | None] = field(default_factory=dict)
    recall_points: np.ndarray = field(default_factory=lambda: np.linspace(0.0, 1.0, 101))
    true_positives: dict[str, int] = field(default_factory=dict)  # at IoU CURVE_IOU, 100 dets
    false_positives: dict[str, int] = field(default_factory=dict)

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
    """The ``evaluate --coco`` stage: COCOeval (bbox) of RESULTS_JSON against SPLIT of DATA.

    DATA is a COCO json (its images need not be present) or a VOC tree. Results name images by
    their integer COCO id (``coco_image_ids``: what ``detect`` writes) or by the dataset's image
    id string (a VOC id such as '000005').
    """
    results_json = Path(results_json)
    entries = _read_coco_results(results_json)
    dataset = load_dataset(data, split, classes)
    gt = dataset_to_coco(dataset)
    category_ids = list(coco_category_ids(dataset).values())
    # a COCO file's categories left out by --classes: their detections are dropped
    every_category = (
        sorted(dataset.category_ids.values()) if isinstance(dataset, CocoDataset) else category_ids
    )
    detections = _dataset_detections(
        entries, coco_image_ids(dataset), category_ids, every_category, results_json
    )
    gt_coco = _quiet_coco(gt)
    crowd = {a["id"]: bool(a.get("iscrowd", 0)) for a in gt["annotations"]}
    npos = {
        name: sum(not crowd[i] for i in gt_coco.getAnnIds(catIds=[cid]))
        for name, cid in zip(dataset.classes, category_ids, strict=True)
    }
    if not detections:
        ap = {n: (0.0 if npos[n] else None) for n in dataset.classes}
        zeros = {n: (np.zeros(101) if npos[n] else None) for n in dataset.classes}
        none = dict.fromkeys(dataset.classes, 0)
        return CocoEvaluation(
            [0.0] * COCO_STATS, ap, npos, 0, "", ["no detections: every AP is 0"],
            precision=zeros, true_positives=none, false_positives=dict(none),
        )  # fmt: skip
    evaluator, summary = _run_cocoeval(gt_coco, detections, category_ids)
    ap, notes = _class_ap(evaluator, dataset.classes)
    curve = _curve_index(evaluator)
    counts = [_match_counts(evaluator, k, curve) for k in range(len(dataset.classes))]
    return CocoEvaluation(
        stats=[float(s) for s in evaluator.stats],
        ap=ap,
        npos=npos,
        detections=len(detections),
        summary=summary,
        notes=notes,
        precision=_class_precision(evaluator, dataset.classes, curve),
        recall_points=np.asarray(evaluator.params.recThrs, np.float64),
        true_positives={n: c[0] for n, c in zip(dataset.classes, counts, strict=True)},
        false_positives={n: c[1] for n, c in zip(dataset.classes, counts, strict=True)},
    )


def _dataset_detections(
    entries: list[dict[str, Any]],
    image_ids: Mapping[str, int],
    category_ids: Sequence[int],
    every_category: Sequence[int],
    path: Path,
) -> list[dict[str, Any]]:
    """ENTRIES of CATEGORY_IDS with integer image ids (an image id string is looked up in
    IMAGE_IDS); those of the data's other categories (EVERY_CATEGORY: left out by --classes)
    dropped; an unknown image or category is an error naming the entry."""
    known = set(image_ids.values())
    detections = []
    for n, e in enumerate(entries):
        raw = e["image_id"]
        if isinstance(raw, str):
            found = image_ids.get(raw)
        else:
            found = raw if isinstance(raw, int) and not isinstance(raw, bool) else None
        if found not in known:
            raise SppdetError(
                f"{path}: entry {n}: image id {raw!r} is not in the dataset; check "
                "--data and --split"
            )
        if e["category_id"] not in category_ids:
            if e["category_id"] in every_category:
                continue  # a category left out by --classes
            raise SppdetError(
                f"{path}: entry {n}: category_id {e['category_id']!r} is not one of the "
                f"dataset's categories {sorted(every_category)}"
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


def _curve_index(evaluator: Any) -> int:
    """The index of CURVE_IOU among COCOeval's IoU thresholds."""
    return int(np.argmin(np.abs(np.asarray(evaluator.params.iouThrs) - CURVE_IOU)))


def _class_precision(
    evaluator: Any, classes: Sequence[str], iou: int
) -> dict[str, np.ndarray | None]:
    """Each class's precision at IoU index IOU over the recall points (all areas, most
    detections); None without ground truth (COCOeval's -1)."""
    precision = evaluator.eval["precision"][iou, :, :, 0, -1]
    return {
        name: None if (precision[:, k] < 0).all() else precision[:, k].astype(np.float64)
        for k, name in enumerate(classes)
    }


def _match_counts(evaluator: Any, k: int, iou: int) -> tuple[int, int]:
    """True and false positives of category index K at IoU index IOU among each image's most
    detections (all areas), as COCOeval's accumulate counts them (ignored ones neither)."""
    params = evaluator.params
    images = len(params.imgIds)
    max_dets = params.maxDets[-1]
    # evalImgs is ordered [category][area range][image]; area range 0 is "all"
    per_image = evaluator.evalImgs[k * len(params.areaRng) * images :][:images]
    tp = fp = 0
    for e in per_image:
        if e is None:
            continue
        matched = e["dtMatches"][iou, :max_dets] > 0
        counted = ~e["dtIgnore"][iou, :max_dets].astype(bool)
        tp += int((matched & counted).sum())
        fp += int((~matched & counted).sum())
    return tp, fp
