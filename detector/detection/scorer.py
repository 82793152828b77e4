"""Scoring windows with a trained model: the ``WindowScorer`` and the candidates of one image.

A ``WindowScorer`` holds one work folder's heads (the fc6/fc7 features the SVMs were trained on, the
SVMs and, optionally, the box regressors) on the runtime's device. ``image_candidates`` pools an
image's proposals from the feature cache in chunks and keeps every (window, class) scoring above
the threshold (-1.5), with its regressed box clipped to the image. Pooling, fc6/fc7, scoring and
the threshold run on the device; per chunk, only the surviving (window, class) pairs, their
scores and their pooled features (for the regressors) come back to the host.
``detector_fingerprint`` is what the detections of a split are made from.

Two scorers (``SCORERS``): the SVMs' margins (the released code's; the results files rank by
them) or, with ``scoring="softmax"``, the fine-tuned net's softmax over fc8 (class k of K+1,
background first), kept above ``SOFTMAX_SCORE_THRESHOLD``. ``probabilities`` turns either into a
probability a user can threshold: the margins through the SVMs' Platt sigmoids (train-svm fits
them), the softmax as it is.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import numpy as np
import torch

from sppdet.cache.fingerprint import fingerprint
from sppdet.cache.workdir import WorkDir
from sppdet.detector.core.boxes import clip_boxes
from sppdet.detector.core.config import (
    SCORERS,
    SOFTMAX_SCORE_THRESHOLD,
    DetectConfig,
    as_dict,
    section_from_dict,
)
from sppdet.detector.core.errors import SppdetError
from sppdet.detector.detection.fc_rank import compressed_head, fit_split, head_source
from sppdet.detector.detection.postprocess import Candidates
from sppdet.detector.heads.bbox_reg import BoxRegressor
from sppdet.detector.heads.calibration import PlattScaling
from sppdet.detector.heads.fc import FcHead
from sppdet.detector.heads.lowrank import FcRank
from sppdet.detector.heads.svm import LinearScorer
from sppdet.detector.training.bbox import load_bbox
from sppdet.detector.training.finetune import load_head
from sppdet.detector.training.inputs import (
    FEATURE_CHUNK,
    MADE_BY,
    SplitInputs,
    host,
    model_name,
)
from sppdet.detector.training.runtime import Runtime
from sppdet.detector.training.svm import feature_head, load_svm

log = logging.getLogger(__name__)


def uncalibrated(model: str = "svm model") -> str:
    """The error for a probability threshold on SVMs MODEL without a calibration."""
    return (
        f"{model}: SVMs without a calibration (trained before it existed), so no probability "
        "to threshold ; rerun `sppdet train-svm`: it calibrates them without retraining them"
    )


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
    calibration: PlattScaling | None = None  # the SVMs' Platt sigmoids (None: uncalibrated)
    scoring: str = "svm"  # one of SCORERS; "softmax": HEAD is the fine-tuned head, with fc8

    @property
    def threshold(self) -> float:
        """The pre-NMS cut of this scorer's scores."""
        return self.cfg.score_threshold if self.scoring == "svm" else SOFTMAX_SCORE_THRESHOLD

    def scores(self, pooled: torch.Tensor, precision: str | None = None) -> torch.Tensor:
        """Scores [N, K] of windows with pooled features POOLED [N, D], on their device (SVM
        margins, or softmax probabilities without the background's); the fc layers in PRECISION
        (default: the runtime's)."""
        runtime = self.runtime if precision is None else replace(self.runtime, precision=precision)
        with torch.no_grad():
            x = pooled
            if self.scoring == "softmax" and self.head is not None:
                with runtime.autocast():
                    logits = self.head.fc8(self.head.features(pooled, "fc7")).float()
                return torch.softmax(logits, dim=1)[:, 1:]
            if self.head is not None:
                with runtime.autocast():
                    x = self.head.features(pooled, self.layer).float()
            return self.scorer.score_tensor(x * self.svm_scale)

    def candidates(
        self, pooled: torch.Tensor, boxes: np.ndarray, width: int, height: int
    ) -> Candidates:
        """Candidates of one image from the pooled features [N, D] of its windows BOXES [N, 4]."""
        scores = self.scores(pooled)
        above = torch.nonzero(scores > self.threshold, as_tuple=True)  # window-major
        kept = host(scores[above])
        rows, labels = (index.cpu().numpy().astype(np.int64) for index in above)
        windows = boxes[rows].astype(np.float32)
        regressed = windows
        if self.regressor is not None and len(rows):
            feats = host(pooled[above[0]]) * self.bbox_scale
            regressed = clip_boxes(self.regressor.apply(windows, feats, labels), width, height)
        return Candidates(windows, regressed.astype(np.float32), kept, labels)

    def probabilities(self, scores: np.ndarray, labels: np.ndarray) -> np.ndarray | None:
        """Probabilities [N] of detections with SCORES [N] (this scorer's) of classes LABELS [N];
        None for uncalibrated SVMs (trained before calibration existed)."""
        if self.scoring == "softmax":
            return np.asarray(scores, np.float64)
        if self.calibration is None:
            return None
        return self.calibration.probability(scores, labels)

    def above(self, candidates: Candidates, threshold: float) -> Candidates:
        """The CANDIDATES whose probability is at least THRESHOLD (all of them at 0)."""
        if threshold <= 0:
            return candidates
        probabilities = self.probabilities(candidates.scores, candidates.labels)
        if probabilities is None:
            raise SppdetError(uncalibrated())
        return candidates.take(np.nonzero(probabilities >= threshold)[0])


def load_window_scorer(
    work: WorkDir,
    inputs: SplitInputs,
    cfg: DetectConfig,
    bbox: bool,
    runtime: Runtime | None = None,
    scoring: str = "svm",
    fc_rank: FcRank | None = None,
) -> WindowScorer:
    """WORK's trained heads for INPUTS, the fc layers on the runtime's device; SCORING picks the
    scorer (``SCORERS``: softmax needs the fine-tuned head); FC_RANK replaces fc6 and fc7 by
    rank-r layers (``fc_rank.compressed_head``)."""
    runtime = runtime or Runtime()
    check_scoring(scoring, inputs.features)
    if fc_rank is not None and fc_rank.fit == "responses" and inputs.features != "spp":
        raise SppdetError(
            f"--fc-rank with --features {inputs.features}: the responses' fit samples SPP "
            "windows ; add --fc-rank-fit weights"
        )
    scorer, svm = load_svm(work, inputs)
    if scoring == "softmax":
        head = load_head(work, inputs).to(runtime.device)
    else:
        head = feature_head(work, inputs, svm["layer"], svm["finetuned"], runtime.device)
    if fc_rank is not None:
        source = head_source(work, svm["made_from"], scoring)
        split = fit_split(work, svm, fc_rank)
        head = compressed_head(work, head, source, fc_rank, split).to(runtime.device)
    regressor, bbox_scale = load_bbox(work, inputs) if bbox else (None, 1.0)
    scale = float(svm["scale"])
    calibration = PlattScaling.of_svm(svm)
    return WindowScorer(
        head, svm["layer"], scorer, scale, regressor, bbox_scale, cfg, runtime, calibration, scoring
    )


def check_scoring(scoring: str, features: str = "spp") -> str:
    """SCORING if it is a scorer that FEATURES can use, else a one-line error."""
    if scoring not in SCORERS:
        raise SppdetError(f"--scorer {scoring!r}: choose one of {', '.join(SCORERS)}")
    if scoring == "softmax" and features != "spp":
        raise SppdetError(
            f"--scorer softmax --features {features}: fine-tuning runs on SPP features only; "
            "use --scorer svm"
        )
    return scoring


def image_candidates(inputs: SplitInputs, detector: WindowScorer, image_id: str) -> Candidates:
    """The candidates of every proposal of IMAGE_ID, pooled and scored FEATURE_CHUNK at a time
    on the detector's device."""
    size = inputs.cache.image_info(image_id)
    pool = partial(inputs.cache.pooled, image_id)
    return window_candidates(detector, inputs.proposals(image_id), pool, size.width, size.height)


def window_candidates(
    detector: WindowScorer,
    boxes: np.ndarray,
    pool: Callable[[np.ndarray], torch.Tensor],
    width: int,
    height: int,
) -> Candidates:
    """The candidates of windows BOXES of a WIDTH x HEIGHT image, POOL(chunk) giving the pooled
    features of FEATURE_CHUNK windows at a time (a cache's, or the Python API's in-memory maps)."""
    parts = []
    for start in range(0, len(boxes), FEATURE_CHUNK):
        chunk = boxes[start : start + FEATURE_CHUNK]
        pooled = pool(chunk).to(detector.runtime.device)
        parts.append(detector.candidates(pooled, chunk, width, height))
    return Candidates.concatenate(parts)


def model_with_fc_rank(work: WorkDir, model: dict[str, Any], compression: FcRank) -> dict[str, Any]:
    """MODEL, a model dict made from WORK (``inference.model``), with the SVMs' fc6/fc7
    replaced as COMPRESSION says (``compressed_head``, so WORK keeps them): the head's state
    replaced, the ranks and fit recorded (``fc_rank``, ``fc_rank_fit``) and the fingerprint made
    with them."""
    record = model["head"]
    source = head_source(work, model["made_from"]["svm"], "svm")
    if record is None:  # pool5 SVMs: compressed_head says so
        compressed_head(work, None, source, compression)
    head = FcHead(int(record["in_dim"]), int(record["hidden"]), int(record["outputs"]), 0.0)
    head.load_state_dict(record["state"])
    split = fit_split(work, work.load_model("svm", MADE_BY["svm"]), compression)
    small = compressed_head(work, head.eval(), source, compression, split)
    state = {k: v.detach().cpu() for k, v in small.state_dict().items()}
    detect = section_from_dict(DetectConfig, model["detect"], str(work.root), "export it again")
    made = detector_fingerprint(work, detect, model["bbox"] is not None, fc_rank=compression)
    return {
        **model,
        "head": {**record, "state": state},
        "fc_rank": list(compression.ranks),
        "fc_rank_fit": compression.fit,
        "fingerprint": fingerprint(made),
    }


def detector_fingerprint(
    work: WorkDir,
    cfg: DetectConfig,
    bbox: bool,
    features: str = "spp",
    scoring: str = "svm",
    fc_rank: FcRank | None = None,
) -> dict[str, Any]:
    svm, box = model_name("svm", features), model_name("bbox", features)
    made = {"svm": work.load_model(svm, MADE_BY[svm])["fingerprint"], "detect": as_dict(cfg)}
    made["bbox"] = work.load_model(box, MADE_BY[box])["fingerprint"] if bbox else None
    if features != "spp":
        made["features"] = features
    if scoring != "svm":  # absent for the SVMs: candidates scored before scorers existed stay
        made["scorer"] = scoring
        made["softmax_threshold"] = SOFTMAX_SCORE_THRESHOLD
        made["finetune"] = work.load_model("finetune", MADE_BY["finetune"])["fingerprint"]
    if fc_rank is not None:  # absent at full rank, as for the scorer
        made.update(fc_rank.record())
    return made
