"""Stand-in detections for a synthetic VOC tree, and the ``synth`` stage that writes the tree with
them: an exercise for the evaluators (jittered ground truth, duplicates, wrong labels, random
false positives, tied scores), not a detector's output.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sppdet.detector.data.records import Dataset
from sppdet.detector.data.synthetic import MARKER, SPLITS, make_synthetic_voc
from sppdet.detector.data.voc import load_voc
from sppdet.detector.evaluation.ap import paired_iou
from sppdet.detector.evaluation.coco import write_coco_results
from sppdet.detector.evaluation.results import write_voc_results
from sppdet.detector.evaluation.voc import ClassDetections


def synthetic_detections(
    dataset: Dataset,
    seed: int = 0,
    hit_rate: float = 0.85,
    duplicate_rate: float = 0.1,
    confusion_rate: float = 0.05,
    false_positives_per_image: float = 1.5,
    score_decimals: int = 2,
) -> dict[str, ClassDetections]:
    """Stand-in detections for DATASET (an evaluator exercise, not a detector's output).

    Each ground-truth box is found with probability HIT_RATE as a jittered copy (position and
    size noise of ~10% of its side) scored by IoU plus noise; some are found twice or with a
    wrong class; each image gets Poisson(FALSE_POSITIVES_PER_IMAGE) random boxes with low
    scores. Scores are rounded to SCORE_DECIMALS, so ties occur as in real result files.
    """
    rng = np.random.default_rng((seed, 7))
    records = dataset.records
    k = len(dataset.classes)
    counts = np.array([len(r.labels) for r in records], np.int64)
    image = np.repeat(np.arange(len(records)), counts)
    gt = np.concatenate([r.boxes for r in records] + [np.zeros((0, 4), np.float32)])
    labels = np.concatenate([r.labels for r in records] + [np.zeros(0, np.int64)])
    sizes = np.array([(r.width, r.height) for r in records], np.float64).reshape(-1, 2)

    # True detections, and a second copy of some of them (duplicates).
    found = rng.random(len(gt)) < hit_rate
    again = found & (rng.random(len(gt)) < duplicate_rate)
    source = np.concatenate([np.flatnonzero(found), np.flatnonzero(again)])
    side = gt[source, 2:] - gt[source, :2] + 1
    centre = (gt[source, :2] + gt[source, 2:]) / 2 + rng.normal(0, 0.1, side.shape) * side
    half = side * np.exp(rng.normal(0, 0.12, side.shape)) / 2
    boxes = np.concatenate([centre - half, centre + half], axis=1)
    iou = np.maximum(paired_iou(boxes, gt[source].astype(np.float64)), 0)
    scores = 0.6 * iou + 0.4 * rng.random(len(source))
    scores[len(np.flatnonzero(found)) :] *= 0.7  # duplicates score lower on average
    det_labels = labels[source].copy()
    confused = rng.random(len(source)) < confusion_rate
    det_labels[confused] = (det_labels[confused] + rng.integers(1, max(k, 2), confused.sum())) % k
    det_image = image[source]

    # Random false positives anywhere in the image.
    n_fp = rng.poisson(false_positives_per_image, len(records))
    fp_image = np.repeat(np.arange(len(records)), n_fp)
    wh = sizes[fp_image]
    fp_side = wh * rng.uniform(0.1, 0.6, wh.shape)
    fp_x1y1 = rng.random(wh.shape) * np.maximum(wh - fp_side, 1)
    fp_boxes = np.concatenate([fp_x1y1, fp_x1y1 + fp_side], axis=1)

    all_image = np.concatenate([det_image, fp_image])
    all_boxes = np.concatenate([boxes, fp_boxes])
    all_labels = np.concatenate([det_labels, rng.integers(0, k, len(fp_image))])
    all_scores = np.round(np.concatenate([scores, 0.5 * rng.random(len(fp_image))]), score_decimals)
    # Clip to the image, as a detector does.
    lo = np.zeros((len(all_boxes), 2))
    hi = sizes[all_image] - 1
    all_boxes = np.concatenate(
        [np.clip(all_boxes[:, :2], lo, hi), np.clip(all_boxes[:, 2:], lo, hi)], axis=1
    )
    all_boxes = np.round(all_boxes, 1)
    ids = np.array([r.image_id for r in records], dtype=str)
    # Results files list detections image by image, as a detector writes them.
    order = np.argsort(all_image, kind="stable")
    detections = {}
    for label, name in enumerate(dataset.classes):
        pick = order[all_labels[order] == label]
        detections[name] = ClassDetections(ids[all_image[pick]], all_scores[pick], all_boxes[pick])
    return detections


@dataclass
class SyntheticDemo:
    root: Path
    split_sizes: dict[str, int]
    objects: int
    difficult: int
    results_dir: Path | None
    coco_results: Path | None


def make_synthetic_demo(
    out_dir: str | Path,
    num_images: int = 100,
    seed: int = 0,
    with_detections: bool = False,
    detections_split: str = "test",
) -> SyntheticDemo:
    """The ``synth`` stage: a synthetic VOC tree, optionally with stand-in detections written as
    VOC results files (OUT/results/comp4_det_<split>_<class>.txt) and COCO results JSON."""
    root = make_synthetic_voc(out_dir, num_images=num_images, seed=seed)
    classes = tuple(json.loads((root / MARKER).read_text())["classes"])
    sizes = {
        name: len((root / "ImageSets" / "Main" / f"{name}.txt").read_text().split())
        for name in SPLITS
    }
    everything = (
        load_voc(root, "trainval", classes).records + load_voc(root, "test", classes).records
    )
    results_dir = coco_path = None
    if with_detections:
        dataset = load_voc(root, detections_split, classes)
        detections = synthetic_detections(dataset, seed=seed)
        results_dir = root / "results"
        write_voc_results(results_dir, detections_split, classes, detections)
        coco_path = write_coco_results(
            results_dir / f"coco_results_{detections_split}.json", dataset, detections
        )
    return SyntheticDemo(
        root=root,
        split_sizes=sizes,
        objects=sum(len(r.labels) for r in everything),
        difficult=sum(int(r.difficult.sum()) for r in everything),
        results_dir=results_dir,
        coco_results=coco_path,
    )


__all__ = [
    "SyntheticDemo",
    "make_synthetic_demo",
    "synthetic_detections",
]
