"""Shared helpers of the Python API tests: a tiny trained work folder, detections compared."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from sppdet.cache.workdir import WorkDir
from sppdet.detector.core.config import PipelineConfig, preset
from sppdet.detector.data.records import ImageRecord
from sppdet.detector.data.synthetic import make_synthetic_voc
from sppdet.detector.evaluation.results import read_voc_results
from sppdet.detector.inference.detections import Detections
from sppdet.detector.pipeline import run_pipeline

CLASSES = ("circle", "square", "triangle")
SPLIT_CAP_OUT_OF_REACH = 1000  # detections per image and class, far above any image's


def tiny_config() -> PipelineConfig:
    """The demo preset shrunk to train in seconds: two scales and float16 maps (the defaults'
    dtype), so that best-scale selection and the cache's rounding are both exercised; fc7 SVMs
    on a briefly fine-tuned head, and box regressors."""
    cfg = preset("demo")
    return dataclasses.replace(
        cfg,
        proposals=dataclasses.replace(cfg.proposals, max_boxes=100, shard_size=4),
        features=dataclasses.replace(
            cfg.features, scales=(96, 128), max_size=400, flip=False, shard_size=4
        ),
        finetune=dataclasses.replace(
            cfg.finetune,
            iterations=20,
            lr_steps=(15,),
            base_lr=0.01,
            fc_dim=32,
            batch_size=32,
            checkpoint_every=10,
            log_every=10,
            images_per_round=4,
        ),
        svm=dataclasses.replace(cfg.svm, norm_sample_windows=300, retrain_every=300),
        # The results files keep at most 5 x images detections per class over the split: a cap
        # one image cannot apply. Set out of reach, so the files hold every image's detections.
        detect=dataclasses.replace(cfg.detect, max_per_split_factor=SPLIT_CAP_OUT_OF_REACH),
    )


def train_tiny(root: Path) -> tuple[Path, WorkDir]:
    """Generated VOC data (10 trainval and 10 test images) and a work folder trained on it
    with ``tiny_config`` by ``run_pipeline``, which also detects on the test split."""
    data = make_synthetic_voc(root / "data", num_images=20, seed=7, image_size=(80, 120))
    work = WorkDir.at(root / "work")
    run_pipeline(data, work, tiny_config(), say=lambda _: None)
    return data, work


def assert_same(found: Detections, expected: Detections) -> None:
    """The two detection lists are equal, bit for bit."""
    assert found.class_names == expected.class_names
    assert found.calibrated == expected.calibrated
    for name in ("boxes", "scores", "margins", "labels"):
        np.testing.assert_array_equal(getattr(found, name), getattr(expected, name), name)


def assert_as_written(
    found: list[Detections], records: list[ImageRecord], folder: Path, limit: int
) -> None:
    """FOUND, the API's detections of every image of a split (RECORDS), are the results files
    in FOLDER, margin and box for box. The split's cap (per class at most LIMIT over the split,
    before the NMS on the regressed boxes) is a split's, which one image cannot apply: the
    fixture sets it high enough to keep every detection, which is checked here."""
    written = read_voc_results(folder, "test", CLASSES).detections
    for k, name in enumerate(CLASSES):
        assert sum(int((d.labels == k).sum()) for d in found) <= limit, "the cap cut"
        for record, dets in zip(records, found, strict=True):
            rows = written[name].image_ids == record.image_id
            mine = dets[dets.labels == k]
            expected = _rows(written[name].scores[rows], written[name].boxes[rows])
            assert _rows(mine.margins, mine.boxes) == expected, (record.image_id, name)
    assert sum(len(d) for d in written.values()) == sum(len(d) for d in found) > 0


def _rows(scores: np.ndarray, boxes: np.ndarray) -> list[tuple[float, ...]]:
    """(score, x1, y1, x2, y2) rows in float64, sorted: the results files' precision."""
    values = np.concatenate([np.asarray(scores, np.float64)[:, None], boxes], axis=1)
    return sorted(tuple(float(v) for v in row) for row in values)
