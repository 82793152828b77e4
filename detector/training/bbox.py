"""The ``train-bbox`` stage: per-class ridge regressors from pool5 features to R-CNN box deltas.

Samples are the windows (proposals and ground-truth boxes) with IoU > 0.5 with a ground-truth
box, at most ``max_samples_per_image`` per image (seeded), each regressed onto its best box.
Features are scaled to a mean norm of 20 and the fit is ``heads.bbox_reg.fit_box_regressor``;
WORK/models/bbox.pt holds the weights and scale, which ``load_bbox`` reads back for detection.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sppdet.cache.fingerprint import fingerprint
from sppdet.cache.workdir import WorkDir
from sppdet.detector.core.boxes import encode_deltas
from sppdet.detector.core.config import BBOX_NORM_SAMPLE_WINDOWS, BboxConfig, as_dict
from sppdet.detector.core.errors import SppdetError
from sppdet.detector.core.progress import progress_bar, track
from sppdet.detector.heads.bbox_reg import BoxRegressor, fit_box_regressor
from sppdet.detector.heads.svm import feature_scale
from sppdet.detector.heads.windows import image_windows
from sppdet.detector.training.inputs import (
    MADE_BY,
    SplitInputs,
    UpToDate,
    feature_settings_fingerprint,
    up_to_date,
    window_features,
)


@dataclass(frozen=True)
class BboxResult:
    """What ``run_train_bbox`` trained: the model file, its feature scale, samples per class."""

    model: Path
    scale: float  # pool5 features are multiplied by it to reach the mean norm ``feature_norm``
    samples: dict[str, int]


def run_train_bbox(
    work: WorkDir, inputs: SplitInputs, cfg: BboxConfig, force: bool = False
) -> BboxResult | UpToDate:
    """Per-class ridge regressors on pool5 features of windows with IoU > 0.5 (heads.bbox_reg)."""
    inputs.check_images()
    cache, classes = inputs.cache, inputs.dataset.classes
    made = {
        "inputs": inputs.inputs_fingerprint,
        "features": feature_settings_fingerprint(cache),
        "classes": list(classes),
        "bbox": as_dict(cfg),
    }
    name = inputs.model("bbox")
    if not force and up_to_date(work, name, made):
        return UpToDate(work.model(name))
    rng = np.random.default_rng(cfg.seed)
    x, y, lab = _samples(inputs, cfg, rng)
    count = min(len(x), BBOX_NORM_SAMPLE_WINDOWS)
    scale = feature_scale(
        x[rng.choice(len(x), count, replace=False)].astype(np.float32), cfg.feature_norm
    )
    with progress_bar(1, "bbox: ridge fits", unit="fit") as bar:
        model = fit_box_regressor(
            x.astype(np.float32) * scale, y, lab, len(classes), cfg.ridge_lambda
        )
        bar.advance()
    path = work.save_model(
        name,
        {
            "fingerprint": fingerprint(made),
            "made_from": made,
            "scale": scale,
            "weights": torch.from_numpy(model.weights),
            "mean": torch.from_numpy(model.target_mean),
            "unwhiten": torch.from_numpy(model.unwhiten),
            "trained": torch.from_numpy(model.trained),
            "classes": list(classes),
        },
    )
    counts = np.bincount(lab, minlength=len(classes)).tolist()
    return BboxResult(path, scale, dict(zip(classes, counts, strict=True)))


def _samples(
    inputs: SplitInputs, cfg: BboxConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The regression samples of the split: pool5 features (float16) [N, D], their deltas onto
    the best ground-truth box [N, 4] and that box's class [N]."""
    classes = inputs.dataset.classes
    features, targets, labels = [], [], []
    for record in track(inputs.dataset.records, len(inputs.dataset), "bbox: samples"):
        if len(record.boxes) == 0:
            continue
        windows = image_windows(record, inputs.proposals(record.image_id), len(classes))
        rows = np.nonzero(windows.max_iou > cfg.min_iou)[0]
        if len(rows) > cfg.max_samples_per_image:
            rows = np.sort(rng.choice(rows, cfg.max_samples_per_image, replace=False))
        boxes = windows.boxes[rows]
        gt = record.boxes[windows.gt_index[rows]]
        pooled = window_features(inputs.cache, None, record.image_id, boxes, "pool5")
        features.append(pooled.astype(np.float16))  # halves the memory of the sample matrix
        targets.append(encode_deltas(boxes, gt))
        labels.append(record.labels[windows.gt_index[rows]])
    if not features:
        raise SppdetError("no ground-truth boxes in the training split: nothing to regress")
    return np.concatenate(features), np.concatenate(targets), np.concatenate(labels)


def load_bbox(work: WorkDir, inputs: SplitInputs) -> tuple[BoxRegressor, float]:
    name = inputs.model("bbox")
    model = work.load_model(name, MADE_BY[name])
    if model["made_from"]["features"] != feature_settings_fingerprint(inputs.cache):
        raise SppdetError(
            f"{work.model(name)}: trained on features with other settings; rerun `{MADE_BY[name]}`"
        )
    regressor = BoxRegressor(
        model["weights"].numpy(),
        model["mean"].numpy(),
        model["unwhiten"].numpy(),
        model["trained"].numpy(),
    )
    return regressor, float(model["scale"])
