"""``run_train_bbox``: its samples against an independent count (every window with IoU > 0.5,
no cap per image), its feature scale against the SVMs' pool5 statistic, and the skip."""

from __future__ import annotations

import numpy as np
import pytest

from sppdet.detector.core.boxes import iou_matrix
from sppdet.detector.core.config import BboxConfig, SvmConfig
from sppdet.detector.training.bbox import BboxResult, run_train_bbox
from sppdet.detector.training.inputs import UpToDate, open_split
from sppdet.detector.training.svm import run_train_svm
from tests.detector.training.shared import CLASSES, mean_norm

# Fewer random windows for the scale than the split's ~600 proposals: a real sample of them.
CFG = BboxConfig(norm_sample_windows=300)
OLD_CAP = 32  # samples per image before the released rule (every window) was followed


def test_every_window_above_half_iou_is_a_sample(split) -> None:  # type: ignore[no-untyped-def]
    data, work = split
    inputs = open_split(work, data, "trainval", CLASSES)
    result = run_train_bbox(work, inputs, CFG, force=True)
    assert isinstance(result, BboxResult)
    assert result.model == work.model("bbox") and result.model.is_file()
    assert result.scale == work.load_model("bbox", "sppdet train-bbox")["scale"]
    counts = dict.fromkeys(CLASSES, 0)
    per_image = []
    for record in inputs.dataset.records:
        if len(record.boxes) == 0:
            continue
        windows = np.concatenate([record.boxes, inputs.proposals(record.image_id)])
        iou = iou_matrix(windows, record.boxes)
        rows = np.nonzero(iou.max(axis=1) > 0.5)[0]
        for label in record.labels[iou[rows].argmax(axis=1)]:
            counts[CLASSES[label]] += 1
        per_image.append(len(rows))
    assert result.samples == counts
    assert max(per_image) > OLD_CAP  # a cap per image would have dropped some
    again = run_train_bbox(work, open_split(work, data, "trainval", CLASSES), CFG)
    assert again == UpToDate(work.model("bbox"))


def test_scale_is_the_svms_pool5_norm_on_random_windows(split) -> None:  # type: ignore[no-untyped-def]
    data, work = split
    inputs = open_split(work, data, "trainval", CLASSES)
    bbox = run_train_bbox(work, inputs, CFG, force=True)
    svm = SvmConfig(layer="pool5", norm_sample_windows=CFG.norm_sample_windows, seed=CFG.seed)
    svm_scale = run_train_svm(work, inputs, svm, finetuned=False, force=True).scale
    # The same windows, the same float32 features, the same float64 mean: the same number.
    assert bbox.scale == svm_scale
    # Not the norm of the samples (windows on objects), which the scale used to come from.
    samples = []
    for record in inputs.dataset.records:
        windows = np.concatenate([record.boxes, inputs.proposals(record.image_id)])
        if len(record.boxes):
            rows = iou_matrix(windows, record.boxes).max(axis=1) > 0.5
            samples.append(inputs.cache.pooled(record.image_id, windows[rows]).numpy())
    assert bbox.scale != pytest.approx(20.0 / mean_norm(samples), rel=0.01)
