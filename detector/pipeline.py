"""`sppdet run` and `sppdet demo`: every stage in order, each skipped when already done.

The stages are the same functions the single commands call; each one resumes or skips by
itself (stores resume shard by shard, a model whose inputs and settings are unchanged is kept), so
re-running ``sppdet run`` after an interrupt continues where it stopped. The runtime's device
runs every network: the trunk (its name is the features' device setting), fine-tuning, the SVMs'
features, box-regression features and detection.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sppdet.cache.atomic import write_json
from sppdet.cache.workdir import WorkDir
from sppdet.detector.core.config import PipelineConfig
from sppdet.detector.data.datasets import load_dataset
from sppdet.detector.data.draw import draw_detections
from sppdet.detector.data.images import read_image
from sppdet.detector.data.records import Dataset
from sppdet.detector.detection.stage import run_detect
from sppdet.detector.evaluation.results import evaluate_voc_folder, read_voc_results
from sppdet.detector.evaluation.voc import VocEvaluation
from sppdet.detector.features.writer import cache_features
from sppdet.detector.training.bbox import run_train_bbox
from sppdet.detector.training.finetune import run_finetune
from sppdet.detector.training.inputs import open_split
from sppdet.detector.training.presets import record_config
from sppdet.detector.training.runtime import Runtime
from sppdet.detector.training.svm import run_train_svm
from sppdet.proposals.stage import run_proposals


@dataclass
class RunReport:
    seconds: dict[str, float] = field(default_factory=dict)
    evaluation: VocEvaluation | None = None
    drawings: list[Path] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "seconds": self.seconds,
            "map": None if self.evaluation is None else self.evaluation.map,
            "ap": {}
            if self.evaluation is None
            else {r.name: r.ap for r in self.evaluation.results},
        }


def run_pipeline(
    data: str | Path,
    work: WorkDir,
    cfg: PipelineConfig,
    train_split: str = "trainval",
    test_split: str = "test",
    classes: tuple[str, ...] | None = None,
    workers: int = 1,
    bbox: bool = True,
    say: Callable[[str], None] = print,
    runtime: Runtime | None = None,
) -> RunReport:
    """Propose, cache, fine-tune, train the SVMs and regressors, detect and evaluate; the stages
    after the cache on the runtime's device (default: the CPU, fp32)."""
    runtime = runtime or Runtime(preset=cfg.preset)
    record_config(work, cfg)  # the work folder's preset, unless it has one
    report = RunReport()
    train_set = load_dataset(data, train_split, classes)
    test_set = load_dataset(data, test_split, train_set.classes)

    def stage(name: str, action: Callable[[], Any]) -> Any:
        say(f"[{len(report.seconds) + 1}/9] {name}")
        start = time.perf_counter()
        result = action()
        report.seconds[name] = round(time.perf_counter() - start, 3)
        return result

    for dataset in (train_set, test_set):
        stage(
            f"propose {dataset.split}",
            lambda d=dataset: run_proposals(d, work, cfg.proposals, workers=workers),
        )
    for dataset in (train_set, test_set):
        stage(
            f"cache-features {dataset.split}",
            lambda d=dataset: cache_features(d, work, cfg.features, cfg.spp),
        )
    train_inputs = open_split(work, data, train_split, train_set.classes, device=runtime.device)
    stage("finetune", lambda: run_finetune(work, train_inputs, cfg.finetune, runtime=runtime))
    stage("train-svm", lambda: run_train_svm(work, train_inputs, cfg.svm, runtime=runtime))
    stage("train-bbox", lambda: run_train_bbox(work, train_inputs, cfg.bbox, runtime=runtime))
    test_inputs = open_split(work, data, test_split, train_set.classes, device=runtime.device)
    stage("detect", lambda: run_detect(work, test_inputs, cfg.detect, bbox=bbox, runtime=runtime))
    report.evaluation = stage(
        "evaluate",
        lambda: evaluate_voc_folder(
            data, test_split, work.detections(test_split), classes=train_set.classes
        ),
    )
    write_json(work.report("eval.json"), report.evaluation.to_json())
    write_json(work.report("run.json"), report.to_json())
    return report


def draw_split(dataset: Dataset, results: Path, out: Path, count: int, top: int = 5) -> list[Path]:
    """Pictures of the TOP best-scoring detections of each of the first COUNT images."""
    detections = read_voc_results(results, dataset.split, dataset.classes).detections
    image_ids = np.concatenate([detections[name].image_ids for name in dataset.classes])
    boxes = np.concatenate([detections[name].boxes for name in dataset.classes])
    scores = np.concatenate([detections[name].scores for name in dataset.classes])
    labels = np.concatenate(
        [np.full(len(detections[name]), k) for k, name in enumerate(dataset.classes)]
    )
    paths = []
    for record in dataset.records[:count]:
        rows = np.nonzero(image_ids == record.image_id)[0]
        rows = rows[np.argsort(-scores[rows], kind="stable")[:top]]
        picture = draw_detections(
            read_image(record.path), boxes[rows], labels[rows], scores[rows], dataset.classes
        )
        paths.append(picture.save(out / f"{record.image_id}.png"))
    return paths
