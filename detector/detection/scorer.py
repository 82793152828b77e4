"""Scoring windows with a trained model: the ``WindowScorer`` and the candidates of one image.

A ``WindowScorer`` holds one work folder's heads (the fc6/fc7 features the SVMs were trained on, the
SVMs and, optionally, the box regressors) on the runtime's device. ``image_candidates`` pools an
image's proposals from the feature cache in chunks and keeps every (window, class) scoring above
the threshold (-1.5), with its regressed box clipped to the image. Pooling, fc6/fc7, scoring and
the threshold run on the device; per chunk, only the surviving (window, class) pairs, their
scores and their pooled features (for the regressors) come back to the host.
``detector_fingerprint`` is what the detections of a split are made from.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from sppdet.cache.workdir import WorkDir
from sppdet.detector.core.boxes import clip_boxes
from sppdet.detector.core.config import (
    DetectConfig,
    as_dict,
)
from sppdet.detector.detection.postprocess import Candidates
from sppdet.detector.heads.bbox_reg import BoxRegressor
from sppdet.detector.heads.fc import FcHead
from sppdet.detector.heads.svm import LinearScorer
from sppdet.detector.training.bbox import load_bbox
from sppdet.detector.training.inputs import (
    FEATURE_CHUNK,
    MADE_BY,
    SplitInputs,
    host,
    model_name,
)
from sppdet.detector.training.runtime import Runtime
from sppdet.detector.training.svm import feature_head, load_svm


@dataclass
class WindowScorer:
    """The heads of one trained model, ready to score the pooled features of windows."""

    head: FcHead | None
    layer: str
    scorer: LinearScorer
    svm_scale: float
    regressor: BoxRegressor | None
    bbox_scale: float
    cfg: DetectConfig
    runtime: Runtime = field(default_factory=Runtime)

    def scores(self, pooled: torch.Tensor, precision: str | None = None) -> torch.Tensor:
        """SVM scores [N, K] of windows with pooled features POOLED [N, D], on their device;
        the fc layers in PRECISION (default: the runtime's)."""
        runtime = self.runtime if precision is None else replace(self.runtime, precision=precision)
        with torch.no_grad():
            x = pooled
            if self.head is not None:
                with runtime.autocast():
                    x = self.head.features(pooled, self.layer).float()
            return self.scorer.score_tensor(x * self.svm_scale)

    def candidates(
        self, pooled: torch.Tensor, boxes: np.ndarray, width: int, height: int
    ) -> Candidates:
        """Candidates of one image from the pooled features [N, D] of its windows BOXES [N, 4]."""
        scores = self.scores(pooled)
        above = torch.nonzero(scores > self.cfg.score_threshold, as_tuple=True)  # window-major
        kept = host(scores[above])
        rows, labels = (index.cpu().numpy().astype(np.int64) for index in above)
        windows = boxes[rows].astype(np.float32)
        regressed = windows
        if self.regressor is not None and len(rows):
            feats = host(pooled[above[0]]) * self.bbox_scale
            regressed = clip_boxes(self.regressor.apply(windows, feats, labels), width, height)
        return Candidates(windows, regressed.astype(np.float32), kept, labels)


def load_window_scorer(
    work: WorkDir,
    inputs: SplitInputs,
    cfg: DetectConfig,
    bbox: bool,
    runtime: Runtime | None = None,
) -> WindowScorer:
    """WORK's trained heads for INPUTS, the fc layers on the runtime's device."""
    runtime = runtime or Runtime()
    scorer, svm = load_svm(work, inputs)
    head = feature_head(work, inputs, svm["layer"], svm["finetuned"], runtime.device)
    regressor, bbox_scale = load_bbox(work, inputs) if bbox else (None, 1.0)
    return WindowScorer(
        head, svm["layer"], scorer, float(svm["scale"]), regressor, bbox_scale, cfg, runtime
    )


def image_candidates(inputs: SplitInputs, detector: WindowScorer, image_id: str) -> Candidates:
    """The candidates of every proposal of IMAGE_ID, pooled and scored FEATURE_CHUNK at a time
    on the detector's device."""
    boxes = inputs.proposals(image_id)
    record_size = inputs.cache.image_info(image_id)
    parts = []
    for start in range(0, len(boxes), FEATURE_CHUNK):
        chunk = boxes[start : start + FEATURE_CHUNK]
        pooled = inputs.cache.pooled(image_id, chunk).to(detector.runtime.device)
        parts.append(detector.candidates(pooled, chunk, record_size.width, record_size.height))
    return Candidates.concatenate(parts)


def detector_fingerprint(
    work: WorkDir, cfg: DetectConfig, bbox: bool, features: str = "spp"
) -> dict[str, Any]:
    svm, box = model_name("svm", features), model_name("bbox", features)
    made = {"svm": work.load_model(svm, MADE_BY[svm])["fingerprint"], "detect": as_dict(cfg)}
    made["bbox"] = work.load_model(box, MADE_BY[box])["fingerprint"] if bbox else None
    if features != "spp":
        made["features"] = features
    return made
