"""Time VOC evaluation at VOC 2007 test scale: 5,000 images x 20 classes x 100k detections.

Builds a VOC tree and comp4 results files in a temporary folder (not timed), then times the
stages of ``sppdet evaluate --voc2007``: parsing the annotation XMLs, reading the results files,
and matching + AP. The JPEGs are 8x8 placeholders (the annotations record 500x375): evaluation
never decodes pixels, it only checks that each image file exists.

    python benchmarks/bench_evaluate.py [--images 5000] [--detections 100000] [--json PATH]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from sppdet.cache.atomic import write_json
from sppdet.detector.data.records import VOC_CLASSES
from sppdet.detector.data.synthetic import SyntheticObject, write_voc_image, write_voc_split
from sppdet.detector.data.voc import load_voc
from sppdet.detector.evaluation.results import read_voc_results, write_voc_results
from sppdet.detector.evaluation.voc import ClassDetections, evaluate_voc

WIDTH, HEIGHT = 500, 375


def build(root: Path, images: int, n_dets: int, objects: float, seed: int) -> None:
    """A VOC-like test set (Poisson(OBJECTS) boxes per image, 15% difficult) and N_DETS
    detections: jittered copies of ground truth plus random boxes, scores with ties."""
    rng = np.random.default_rng(seed)
    classes = VOC_CLASSES
    ids = [f"{i:06d}" for i in range(images)]
    counts = np.maximum(rng.poisson(objects, images), 1)
    n_gt = int(counts.sum())
    wh = rng.uniform(20, 300, (n_gt, 2))
    xy = rng.uniform(0, 1, (n_gt, 2)) * ([WIDTH, HEIGHT] - wh)
    gt = np.round(np.concatenate([xy, xy + wh - 1], axis=1))
    labels = rng.integers(0, len(classes), n_gt)
    difficult = rng.random(n_gt) < 0.15
    placeholder = np.zeros((8, 8, 3), np.uint8)
    start = 0
    for image_id, k in zip(ids, counts.tolist(), strict=True):
        objs = [
            SyntheticObject(classes[labels[j]], tuple(gt[j]), bool(difficult[j]))
            for j in range(start, start + k)
        ]
        write_voc_image(root, image_id, placeholder, objs, size=(WIDTH, HEIGHT))
        start += k
    write_voc_split(root, "test", ids)

    image_of_gt = np.repeat(np.arange(images), counts)
    n_true = min(n_dets // 2, 2 * n_gt)
    src = rng.integers(0, n_gt, n_true)
    side = gt[src, 2:] - gt[src, :2] + 1
    boxes = gt[src] + np.concatenate([side, side], axis=1) * rng.normal(0, 0.1, (n_true, 4))
    n_fp = n_dets - n_true
    fp_wh = rng.uniform(20, 300, (n_fp, 2))
    fp_xy = rng.uniform(0, 1, (n_fp, 2)) * ([WIDTH, HEIGHT] - fp_wh)
    all_boxes = np.concatenate([boxes, np.concatenate([fp_xy, fp_xy + fp_wh], axis=1)])
    all_boxes = np.clip(np.round(all_boxes, 1), 0, [WIDTH - 1, HEIGHT - 1] * 2)
    all_image = np.concatenate([image_of_gt[src], rng.integers(0, images, n_fp)])
    all_labels = np.concatenate([labels[src], rng.integers(0, len(classes), n_fp)])
    scores = np.round(np.concatenate([rng.uniform(0.3, 1, n_true), rng.uniform(0, 0.7, n_fp)]), 3)
    id_array = np.array(ids)
    detections = {
        name: ClassDetections(
            id_array[all_image[all_labels == k]],
            scores[all_labels == k],
            all_boxes[all_labels == k],
        )
        for k, name in enumerate(classes)
    }
    write_voc_results(root / "results", "test", classes, detections)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--detections", type=int, default=100_000)
    parser.add_argument("--objects", type=float, default=2.4, help="mean boxes per image")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs; the best is reported")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=Path("runs/bench_evaluate.json"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        build(root, args.images, args.detections, args.objects, args.seed)
        setup = time.perf_counter() - t0
        timings: dict[str, list[float]] = {"annotations": [], "results": [], "scoring": []}
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            dataset = load_voc(root, "test", VOC_CLASSES)
            t1 = time.perf_counter()
            results = read_voc_results(
                root / "results", "test", VOC_CLASSES, [r.image_id for r in dataset.records]
            )
            t2 = time.perf_counter()
            evaluation = evaluate_voc(dataset, results.detections, "voc2007")
            t3 = time.perf_counter()
            timings["annotations"].append(t1 - t0)
            timings["results"].append(t2 - t1)
            timings["scoring"].append(t3 - t2)
    best = {k: min(v) for k, v in timings.items()}
    best["total"] = sum(best.values())
    n_dets = sum(len(d) for d in results.detections.values())
    n_gt = sum(len(r.labels) for r in dataset.records)

    print(
        f"VOC 2007 evaluation: {len(dataset)} images, {n_gt} boxes, {n_dets} detections, "
        f"{len(VOC_CLASSES)} classes (setup {setup:.1f} s, best of {args.repeat})"
    )
    print(f"{'stage':<34}{'seconds':>10}")
    labels = {
        "annotations": "parse annotation XMLs (load_voc)",
        "results": "read results files",
        "scoring": "match + AP (evaluate_voc)",
        "total": "total",
    }
    for key, label in labels.items():
        print(f"{label:<34}{best[key]:>10.3f}")
    print(f"mAP of the generated detections: {evaluation.map:.4f}")
    report = {
        "benchmark": "evaluate_voc2007",
        "images": len(dataset),
        "boxes": n_gt,
        "detections": n_dets,
        "classes": len(VOC_CLASSES),
        "seconds": best,
        "runs": timings,
        "map": evaluation.map,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "python": platform.python_version(),
    }
    write_json(args.json, report)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
