"""The ``train-bbox`` stage: per-class ridge regressors from pool5 features to R-CNN box deltas.

As ``spp_train_bbox_regressor.m``: the samples are every window (proposals and ground-truth
boxes) with IoU > 0.5 with a ground-truth box, each regressed onto its best box; the features are
scaled to a mean norm of 20, the mean pool5 norm estimated on random windows of the split
(``inputs.sample_norm_scale``: with the SVMs' count and seed, the same windows), not on the
samples. The samples go image by image into ``heads.bbox_reg.NormalEquations`` (per class XᵀX
and XᵀY: memory bounded whatever their number), solved at the end. WORK/models/bbox.pt holds
the weights and scale, which ``load_bbox`` reads back for detection. The windows are pooled on
the runtime's device, each image's maps read ahead by a reader thread; only the samples'
features come back to the host, where the normal equations are built and solved.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sppdet.cache.fingerprint import fingerprint
from sppdet.cache.workdir import WorkDir
from sppdet.detector.core.boxes import encode_deltas
from sppdet.detector.core.config import BboxConfig, as_dict
from sppdet.detector.core.errors import SppdetError
from sppdet.detector.core.progress import progress_bar, track
from sppdet.detector.data.records import ImageRecord
from sppdet.detector.heads.bbox_reg import BoxRegressor, NormalEquations
from sppdet.detector.heads.windows import image_windows
from sppdet.detector.training.inputs import (
    MADE_BY,
    SplitInputs,
    UpToDate,
    feature_settings_fingerprint,
    host,
    same_window_features,
    sample_norm_scale,
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

    def pool5(image_id: str, boxes: np.ndarray) -> np.ndarray:
        return host(window_features(cache, None, image_id, boxes, "pool5", runtime))

    scale = sample_norm_scale(inputs, pool5, cfg.norm_sample_windows, cfg.seed, cfg.feature_norm)
    systems = NormalEquations(len(classes), cache.dim, scale)
    _add_samples(inputs, cfg, pool5, systems, runtime)
    with progress_bar(1, "bbox: ridge fits", unit="fit") as bar:
        model = systems.fit(cfg.ridge_lambda)
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
    counts = systems.counts.tolist()
    return BboxResult(path, scale, dict(zip(classes, counts, strict=True)))


def _add_samples(
    inputs: SplitInputs,
    cfg: BboxConfig,
    pool5: Callable[[str, np.ndarray], np.ndarray],
    systems: NormalEquations,
    runtime: Runtime,
) -> None:
    """Every regression sample of the split into SYSTEMS: each window with IoU > ``min_iou``
    with a ground-truth box, its pool5 features, its deltas onto that best box and its class."""
    records = inputs.dataset.records
    eta = EtaCheck("train-bbox", len(records), "img", runtime, SHORTER_BBOX)
    # Samples overlap a ground-truth box: their best scales are about the boxes'.
    ahead = read_ahead(inputs.cache, records, lambda r: (r.image_id, r.boxes))
    with ahead as ready:
        for record in track(ready, len(records), "bbox: samples"):
            if len(record.boxes):
                _add_image_samples(inputs, cfg, pool5, systems, record)
            eta.advance()
    if not systems.counts.any():
        raise SppdetError("no ground-truth boxes in the training split: nothing to regress")


def _add_image_samples(
    inputs: SplitInputs,
    cfg: BboxConfig,
    pool5: Callable[[str, np.ndarray], np.ndarray],
    systems: NormalEquations,
    record: ImageRecord,
) -> None:
    windows = image_windows(record, inputs.proposals(record.image_id), len(inputs.dataset.classes))
    rows = np.nonzero(windows.max_iou > cfg.min_iou)[0]
    boxes = windows.boxes[rows]
    best = windows.gt_index[rows]
    systems.add(
        pool5(record.image_id, boxes), encode_deltas(boxes, record.boxes[best]), record.labels[best]
    )


def load_bbox(work: WorkDir, inputs: SplitInputs) -> tuple[BoxRegressor, float]:
    name = inputs.model("bbox")
    model = work.load_model(name, MADE_BY[name])
    if not same_window_features(model["made_from"]["features"], inputs.cache.settings):
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
