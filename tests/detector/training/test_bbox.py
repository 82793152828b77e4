"""``run_train_bbox``: its typed result against samples counted independently, and the skip."""

from __future__ import annotations

import numpy as np
import pytest

from sppdet.detector.core.boxes import iou_matrix
from sppdet.detector.core.config import BboxConfig
from sppdet.detector.training.bbox import BboxResult, run_train_bbox
from sppdet.detector.training.inputs import UpToDate, open_split
from tests.detector.training.shared import CLASSES, mean_norm

CFG = BboxConfig(max_samples_per_image=10_000)  # no cap: every window with IoU > 0.5 counts


def test_samples_and_scale_match_an_independent_count(split) -> None:  # type: ignore[no-untyped-def]
    data, work = split
    inputs = open_split(work, data, "trainval", CLASSES)
    result = run_train_bbox(work, inputs, CFG)
    assert isinstance(result, BboxResult)
    assert result.model == work.model("bbox") and result.model.is_file()
    assert result.scale == work.load_model("bbox", "sppdet train-bbox")["scale"]
    counts = dict.fromkeys(CLASSES, 0)
    features = []
    for record in inputs.dataset.records:
        if len(record.boxes) == 0:
            continue
        windows = np.concatenate([record.boxes, inputs.proposals(record.image_id)])
        iou = iou_matrix(windows, record.boxes)
        rows = np.nonzero(iou.max(axis=1) > 0.5)[0]
        for label in record.labels[iou[rows].argmax(axis=1)]:
            counts[CLASSES[label]] += 1
        # The stage keeps its samples in float16.
        pooled = inputs.cache.pooled(record.image_id, windows[rows]).numpy()
        features.append(pooled.astype(np.float16).astype(np.float32))
    assert result.samples == counts and sum(counts.values()) > 0
    assert result.scale == pytest.approx(20.0 / mean_norm(features), rel=1e-4)
    again = run_train_bbox(work, open_split(work, data, "trainval", CLASSES), CFG)
    assert again == UpToDate(work.model("bbox"))
