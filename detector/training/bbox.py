"""The ``train-bbox`` stage: per-class ridge regressors from pool5 features to R-CNN box deltas.

Samples are the windows (proposals and ground-truth boxes) with IoU > 0.5 with a ground-truth
box, at most ``max_samples_per_image`` per image (seeded), each regressed onto its best box.
Features are scaled to a mean norm of 20 and the fit is ``heads.bbox_reg.fit_box_regressor``;
WORK/models/bbox.pt holds the weights and scale, which ``load_bbox`` reads back for detection.
The windows are pooled on the runtime's device, each image's maps read ahead by a reader thread;
only the sampled windows' features come back to the host, where the ridge fits run.
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
from sppdet.detector.data.records import ImageRecord
from sppdet.detector.heads.bbox_reg import BoxRegressor, fit_box_regressor
from sppdet.detector.heads.svm import feature_scale
from sppdet.detector.heads.windows import image_windows
from sppdet.detector.training.inputs import (
    MADE_BY,
    SplitInputs,
    UpToDate,
    feature_settings_fingerprint,
    host,
    up_to_date,
    window_features,
)
from sppdet.detector.training.prefetch import read_ahead
from sppdet.detector.training.runtime import EtaCheck, Runtime

SHORTER_BBOX = "a smaller --split"  # the ETA warning's advice


@dataclass(frozen=True)
class BboxResult:
    """What ``run_train_bbox`` trained: the model file, its feature scale, samples per class."""

    model: Path
    scale: float  # pool5 features are multiplied by it to reach the mean norm ``feature_norm``
    samples: dict[str, int]


def run_train_bbox(
    work: WorkDir,
    inputs: SplitInputs,
    cfg: BboxConfig,
    force: bool = False,
    runtime: Runtime | None = None,
) -> BboxResult | UpToDate:
    """Per-class ridge regressors on pool5 features of windows with IoU > 0.5 (heads.bbox_reg),
    pooled on the runtime's device."""
    runtime = runtime or Runtime()
    inputs.check_images()
    inputs.to(runtime.device)
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
    x, y, lab = _samples(inputs, cfg, rng, runtime)
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
    inputs: SplitInputs, cfg: BboxConfig, rng: np.random.Generator, runtime: Runtime
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The regression samples of the split: pool5 features (float16) [N, D], their deltas onto
    the best ground-truth box [N, 4] and that box's class [N]."""
    records = inputs.dataset.records
    features, targets, labels = [], [], []
    eta = EtaCheck("train-bbox", len(records), "img", runtime, SHORTER_BBOX)
    # Samples overlap a ground-truth box: their best scales are about the boxes'.
    ahead = read_ahead(inputs.cache, records, lambda r: (r.image_id, r.boxes))
    with ahead as ready:
        for record in track(ready, len(records), "bbox: samples"):
            if len(record.boxes):
                x, y, lab = _image_samples(inputs, cfg, rng, runtime, record)
                features.append(x)
                targets.append(y)
                labels.append(lab)
            eta.advance()
    if not features:
        raise SppdetError("no ground-truth boxes in the training split: nothing to regress")
    return np.concatenate(features), np.concatenate(targets), np.concatenate(labels)


def _image_samples(
    inputs: SplitInputs,
    cfg: BboxConfig,
    rng: np.random.Generator,
    runtime: Runtime,
    record: ImageRecord,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RECORD's samples (a seeded pick of at most ``max_samples_per_image``): pool5 features
    (float16, on the host), their deltas and their classes."""
    windows = image_windows(record, inputs.proposals(record.image_id), len(inputs.dataset.classes))
    rows = np.nonzero(windows.max_iou > cfg.min_iou)[0]
    if len(rows) > cfg.max_samples_per_image:
        rows = np.sort(rng.choice(rows, cfg.max_samples_per_image, replace=False))
    boxes = windows.boxes[rows]
    gt = record.boxes[windows.gt_index[rows]]
    pooled = window_features(inputs.cache, None, record.image_id, boxes, "pool5", runtime)
    # float16 halves the memory of the sample matrix
    return (
        host(pooled).astype(np.float16),
        encode_deltas(boxes, gt),
        record.labels[windows.gt_index[rows]],
    )


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
