"""Bbox: split out of the former ``training`` module."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from sppdet.cache.fingerprint import fingerprint
from sppdet.cache.workdir import WorkDir
from sppdet.detector.core.boxes import encode_deltas
from sppdet.detector.core.config import BboxConfig, as_dict
from sppdet.detector.core.errors import SppdetError
from sppdet.detector.core.progress import progress_bar, track
from sppdet.detector.heads.bbox_reg import BoxRegressor, fit_box_regressor
from sppdet.detector.heads.svm import feature_scale
from sppdet.detector.heads.windows import image_windows
from sppdet.detector.training.inputs import (
    MADE_BY,
    SplitInputs,
    feature_settings_fingerprint,
    up_to_date,
    window_features,
)


def run_train_bbox(
    work: WorkDir, inputs: SplitInputs, cfg: BboxConfig, force: bool = False
) -> dict[str, Any]:
    """Per-class ridge regressors on pool5 features of windows with IoU > 0.5 (bbox_reg.py)."""
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
        return {"skipped": True, "model": str(work.model(name))}
    rng = np.random.default_rng(cfg.seed)
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
        pooled = window_features(cache, None, record.image_id, boxes, "pool5")
        features.append(pooled.astype(np.float16))  # halves the memory of the sample matrix
        targets.append(encode_deltas(boxes, gt))
        labels.append(record.labels[windows.gt_index[rows]])
    if not features:
        raise SppdetError("no ground-truth boxes in the training split: nothing to regress")
    x = np.concatenate(features)
    sample = x[rng.choice(len(x), min(len(x), 10_000), replace=False)].astype(np.float32)
    scale = feature_scale(sample, cfg.feature_norm)
    y, lab = np.concatenate(targets), np.concatenate(labels)
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
    return {"scale": scale, "samples": dict(zip(classes, counts, strict=True)), "model": str(path)}


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
