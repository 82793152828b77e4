"""End-to-end benchmark of a preset (issue 5): seconds per stage, peak RAM, mAP variants, and the
test-time seconds per image split into conv, pooling, fc, SVM and NMS.

    python benchmarks/bench_pipeline.py --data ../shared/data/raccoon-voc --work /tmp/bench-e2e \
        [--preset quick-cpu] [--weights PATH] [--out bench_pipeline.json]

mAP variants, all on the same stores: the run's own (fine-tuned fc7 + box regression), without
box regression, and SVMs on pool5, on fc7 of the pre-trained (not fine-tuned) head, and on the
fine-tuned fc7. Each variant works in a copy of the work folder that shares the proposals and
the feature cache.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from sppdet.cache.workdir import WorkDir
from sppdet.detector.backbones.weights import load_backbone
from sppdet.detector.core.boxes import nms
from sppdet.detector.core.config import override, preset
from sppdet.detector.detection.postprocess import threshold_scores
from sppdet.detector.detection.scorer import load_window_scorer
from sppdet.detector.detection.stage import run_detect
from sppdet.detector.evaluation.results import evaluate_voc_folder
from sppdet.detector.features.conv5 import compute_conv5, load_resized
from sppdet.detector.pipeline import run_pipeline
from sppdet.detector.training.inputs import open_split
from sppdet.detector.training.svm import run_train_svm


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def variant(work: WorkDir, name: str) -> WorkDir:
    """A work folder sharing WORK's proposals, features and fine-tuned head."""
    other = WorkDir.at(work.root.parent / f"{work.root.name}-{name}")
    if other.root.exists():
        shutil.rmtree(other.root)
    (other.root / "models").mkdir(parents=True)
    for sub in ("proposals", "features"):
        (other.root / sub).symlink_to(work.root / sub, target_is_directory=True)
    shutil.copy(work.settings_path, other.settings_path)
    shutil.copy(work.model("finetune"), other.model("finetune"))
    shutil.copy(work.model("bbox"), other.model("bbox"))
    return other


def test_time_split(work: WorkDir, data: str, cfg, images: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Mean seconds per test image of each part of detection (proposals excluded)."""
    inputs = open_split(work, data, "test", model_classes_from="svm")
    detector = load_window_scorer(work, inputs, cfg.detect, bbox=True)
    backbone = load_backbone(cfg.features.backbone, cfg.features.weights)
    trunk = backbone.trunk.eval()
    parts = {"conv": 0.0, "pooling": 0.0, "fc": 0.0, "svm": 0.0, "nms": 0.0}
    records = inputs.dataset.records[:images]
    for record in records:
        start = time.perf_counter()
        loaded = load_resized(record, cfg.features.scales, cfg.features.max_size)
        compute_conv5(
            trunk, backbone.preprocessing, loaded.resized, torch.device("cpu"), False, torch.float16
        )
        parts["conv"] += time.perf_counter() - start
        boxes = inputs.proposals(record.image_id)
        inputs.cache.conv5(record.image_id, 0)  # maps in memory: pooling alone is timed
        start = time.perf_counter()
        pooled = inputs.cache.pooled(record.image_id, boxes)
        parts["pooling"] += time.perf_counter() - start
        start = time.perf_counter()
        with torch.no_grad():
            feats = detector.head.features(pooled, detector.layer) if detector.head else pooled
        parts["fc"] += time.perf_counter() - start
        start = time.perf_counter()
        scores = detector.scorer.score(feats.numpy() * detector.svm_scale)
        parts["svm"] += time.perf_counter() - start
        start = time.perf_counter()
        rows, labels = threshold_scores(scores, cfg.detect.score_threshold)
        for k in np.unique(labels):
            sel = rows[labels == k]
            nms(boxes[sel], scores[sel, k], cfg.detect.nms_iou)
        parts["nms"] += time.perf_counter() - start
    return {k: v / len(records) for k, v in parts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--work", required=True, type=Path)
    parser.add_argument("--preset", default="quick-cpu")
    parser.add_argument("--weights", default=None)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timing-images", type=int, default=10)
    parser.add_argument("--out", default="bench_pipeline.json")
    args = parser.parse_args()

    cfg = preset(args.preset)
    cfg = dataclasses.replace(cfg, features=override(cfg.features, weights=args.weights))
    work = WorkDir.at(args.work)
    start = time.perf_counter()
    report = run_pipeline(args.data, work, cfg, workers=args.workers)
    total = time.perf_counter() - start
    result = {
        "preset": args.preset,
        "weights": cfg.features.weights,
        "seconds_per_stage": report.seconds,
        "seconds_total": round(total, 1),
        "peak_ram_mib": round(peak_rss_mib(), 1),
        "map": {"ftfc7 + bbox": report.evaluation.map},
    }
    test = open_split(work, args.data, "test", model_classes_from="svm")
    out = work.root / "no-bbox"
    run_detect(work, test, cfg.detect, bbox=False, out=out, force=True)
    result["map"]["ftfc7"] = evaluate_voc_folder(args.data, "test", out).map
    run_detect(work, test, cfg.detect, bbox=True, force=True)  # restore the run's candidates
    for name, layer, finetuned in (("pool5", "pool5", False), ("fc7", "fc7", False)):
        other = variant(work, name)
        train = open_split(other, args.data, "trainval")
        run_train_svm(other, train, dataclasses.replace(cfg.svm, layer=layer), finetuned)
        test = open_split(other, args.data, "test", model_classes_from="svm")
        for bbox in (False, True):
            run_detect(other, test, cfg.detect, bbox=bbox, force=True)
            label = f"{name}{' + bbox' if bbox else ''}"
            result["map"][label] = evaluate_voc_folder(
                args.data, "test", other.detections("test")
            ).map
    result["test_seconds_per_image"] = test_time_split(work, args.data, cfg, args.timing_images)
    print(json.dumps(result, indent=2))
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
