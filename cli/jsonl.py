"""``detect --jsonl``: one JSON object per image on stdout, for image files and for a split.

Every line is ``{"image": PATH, "detections": [{"class", "score", "box"}, ...]}``, detections best
first, boxes x1 y1 x2 y2 in 0-based pixels; a split's lines add ``"image_id"`` and take the
detections from the VOC results files the split's run wrote, so ``score`` is the one those
files rank by (the SVM margin with --scorer svm).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sppdet.detector.data.records import Dataset


def image_line(path: Path, detections: list[dict[str, Any]]) -> str:
    return json.dumps({"image": str(path), "detections": detections})


def split_lines(dataset: Dataset, results: Path) -> Iterator[str]:
    """One line per image of DATASET (in its order, images without detections included) with
    its detections in the VOC results files of the folder RESULTS."""
    from sppdet.detector.detection.images import ImageDetection
    from sppdet.detector.evaluation.results import read_voc_results

    found = read_voc_results(results, dataset.split, dataset.classes).detections
    per_image: dict[str, list[ImageDetection]] = {r.image_id: [] for r in dataset.records}
    for name, kept in found.items():
        rows = zip(kept.image_ids.tolist(), kept.scores.tolist(), kept.boxes.tolist(), strict=True)
        for image_id, score, box in rows:
            per_image[image_id].append(ImageDetection(name, score, box))
    for record in dataset.records:
        best_first = sorted(per_image[record.image_id], key=lambda d: -d.score)
        line = {"image": str(record.path), "image_id": record.image_id}
        yield json.dumps({**line, "detections": [d.to_json() for d in best_first]})
