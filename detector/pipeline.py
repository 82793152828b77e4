"""`sppdet run` and `sppdet demo`: every stage in order, each skipped when already done.

The stages are the same functions the single commands call; each one resumes or skips by
itself (stores resume shard by shard, a model whose inputs and settings are unchanged is kept), so
re-running ``sppdet run`` after an interrupt continues where it stopped. The runtime's device
runs every network: the trunk (its name is the features' device setting), fine-tuning, the SVMs'
features, box-regression features and detection.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sppdet.cache.atomic import write_json
from sppdet.cache.workdir import WorkDir
from sppdet.detector.backbones.weights import weights_kind
from sppdet.detector.core.config import DRAW_SCORE_THRESHOLD, PipelineConfig
from sppdet.detector.core.errors import SppdetError
from sppdet.detector.data.datasets import load_dataset
from sppdet.detector.data.draw import draw_detections, picture_path
from sppdet.detector.data.images import read_image
from sppdet.detector.data.records import Dataset
from sppdet.detector.detection.scorer import uncalibrated
from sppdet.detector.detection.stage import run_detect
from sppdet.detector.evaluation.plot import eval_report
from sppdet.detector.evaluation.results import evaluate_voc_folder, read_voc_results
from sppdet.detector.evaluation.voc import VocEvaluation
from sppdet.detector.features.writer import (
    cache_features,
    detection_config,
    random_weights_warning,
)
from sppdet.detector.heads.calibration import PlattScaling
from sppdet.detector.training.bbox import run_train_bbox
from sppdet.detector.training.finetune import run_finetune
from sppdet.detector.training.inputs import MADE_BY, open_split
from sppdet.detector.training.presets import record_config
from sppdet.detector.training.runtime import Runtime
from sppdet.detector.training.svm import run_train_svm
from sppdet.proposals.stage import run_proposals

log = logging.getLogger(__name__)


@dataclass
class RunReport:
    seconds: dict[str, float] = field(default_factory=dict)
    evaluation: VocEvaluation | None = None
    drawings: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # logged by the stages, repeated at the end

    def to_json(self) -> dict[str, Any]:
        return {
            "warnings": self.warnings,
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
    say: Callable[[str], None] = log.info,
    runtime: Runtime | None = None,
    image_dir: str | Path | None = None,
) -> RunReport:
    """Propose, cache, fine-tune, train the SVMs and regressors, detect and evaluate; the stages
    after the cache on the runtime's device (default: the CPU, fp32). SAY tells which stage
    starts (default: a log line). IMAGE_DIR: a COCO DATA's image folder (default: beside it);
    a missing image is refused before any stage runs."""
    runtime = runtime or Runtime(preset=cfg.preset)
    record_config(work, cfg)  # the work folder's preset, unless it has one
    report = RunReport()
    train_set = load_dataset(data, train_split, classes, image_dir, require_images=True)
    test_set = load_dataset(data, test_split, train_set.classes, image_dir, require_images=True)

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
    test_features = cfg.features  # the test split needs no mirrored maps, unless trained on
    if test_split != train_split:
        test_features = detection_config(work, test_split, cfg.features)
    for dataset, features in ((train_set, cfg.features), (test_set, test_features)):
        stage(
            f"cache-features {dataset.split}",
            lambda d=dataset, f=features: cache_features(d, work, f, cfg.spp),
        )
    if weights_kind(cfg.features.weights) == "random":  # cache_features logged it
        report.warnings.append(random_weights_warning("cache-features"))
    train_inputs = open_split(work, data, train_split, train_set.classes, device=runtime.device)
    stage("finetune", lambda: run_finetune(work, train_inputs, cfg.finetune, runtime=runtime))
    stage("train-svm", lambda: run_train_svm(work, train_inputs, cfg.svm, runtime=runtime))
    stage("train-bbox", lambda: run_train_bbox(work, train_inputs, cfg.bbox, runtime=runtime))
    test_inputs = open_split(work, data, test_split, train_set.classes, device=runtime.device)
    stage(
        "detect",
        lambda: run_detect(work, test_inputs, cfg.detect, bbox=bbox, data=data, runtime=runtime),
    )
    report.evaluation = stage(
        "evaluate",
        lambda: evaluate_voc_folder(
            data, test_split, work.detections(test_split), classes=train_set.classes
        ),
    )
    results = str(work.detections(test_split))
    write_json(  # what ``evaluate --work`` writes: per class, the precision/recall arrays too
        work.report("eval.json"),
        eval_report(report.evaluation, data=str(data), split=test_split, detections=results),
    )
    write_json(work.report("run.json"), report.to_json())
    return report


def draw_split(
    dataset: Dataset, work: WorkDir, out: Path, count: int, threshold: float = DRAW_SCORE_THRESHOLD
) -> list[Path]:
    """Pictures of the first COUNT images of DATASET's split with WORK's detections of them whose
    probability (the SVM margin through its calibration) is at least THRESHOLD, in OUT, each
    named and encoded as its image."""
    calibration = PlattScaling.of_svm(work.load_model("svm", MADE_BY["svm"]))
    if calibration is None:
        raise SppdetError(uncalibrated(str(work.model("svm"))))
    results = work.detections(dataset.split)
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
        probabilities = calibration.probability(scores[rows], labels[rows])
        picture = draw_detections(
            read_image(record.path),
            boxes[rows],
            labels[rows],
            probabilities,
            dataset.classes,
            threshold,
        )
        paths.append(picture.save(picture_path(record.path, out)))
    return paths
