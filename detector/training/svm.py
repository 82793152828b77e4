"""The ``train-svm`` stage: one linear SVM per class on pool5, fc6 or fc7 window features.

Features are scaled to a mean norm of 20, estimated on random windows (``sample_norm_scale``).
Positives are the ground-truth boxes; negatives are proposals below IoU 0.3 with every box of the
class, deduplicated per image (``dedup_negatives``: one per conv5 cell set, or IoU > 0.7) and
mined hard by ``heads.svm.train_svms``. fc6/fc7 come from the fine-tuned head or, with
``--no-finetuned``, from the backbone's own (``feature_head``). WORK/models/svm.pt records the
head it was trained on; ``load_svm`` refuses it with another head or other features. Features
are pooled, run through the head and scored on the runtime's device (each image's maps read
ahead by a reader thread); the positives and the hard negatives come back to the host, where
liblinear runs.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sppdet.cache.fingerprint import fingerprint
from sppdet.cache.workdir import WorkDir
from sppdet.detector.core.boxes import nms
from sppdet.detector.core.config import FinetuneConfig, SvmConfig, as_dict
from sppdet.detector.core.errors import SppdetError
from sppdet.detector.core.progress import progress_bar, track
from sppdet.detector.heads.fc import FcHead
from sppdet.detector.heads.svm import LinearScorer, TrainingImage, train_svms
from sppdet.detector.heads.windows import image_windows
from sppdet.detector.training.finetune import build_head, load_head
from sppdet.detector.training.inputs import (
    FEATURE_CHUNK,
    MADE_BY,
    SplitInputs,
    UpToDate,
    WindowFeatures,
    feature_settings_fingerprint,
    host,
    sample_norm_scale,
    up_to_date,
    window_features,
)
from sppdet.detector.training.prefetch import read_ahead
from sppdet.detector.training.runtime import (
    EtaCheck,
    PrecisionDrift,
    Runtime,
    precision_setting,
)

log = logging.getLogger(__name__)

SHORTER_SVM = "--layer pool5 (no fc6/fc7 per window)"  # the ETA warning's advice

# (image id, boxes [N, 4]) -> features [N, D], float32 on the runtime's device
Features = Callable[[str, np.ndarray], torch.Tensor]


def dedup_negatives(
    cache: WindowFeatures,
    image_id: str,
    boxes: np.ndarray,
    cfg: SvmConfig,
) -> np.ndarray:
    """Indices of BOXES kept as distinct negatives: one per (best scale, conv5 cells) in the
    released code (one per distinct box for R-CNN features), or greedy IoU > 0.7 suppression in
    proposal order (the paper)."""
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    if cfg.neg_dedup == "cells":
        _, first = np.unique(cache.feature_keys(image_id, boxes), axis=0, return_index=True)
        return np.sort(first)
    order_scores = -np.arange(len(boxes), dtype=np.float64)  # earlier proposals win
    return np.sort(nms(boxes, order_scores, cfg.neg_dedup_iou))


@dataclass(frozen=True)
class SvmResult:
    """What ``run_train_svm`` trained: the model file, its feature scale, per-class statistics."""

    model: Path
    scale: float  # features are multiplied by it to reach the mean norm ``feature_norm``
    stats: dict[str, dict[str, Any]]  # per class: retrains, cached_negatives, cache_history
    drift: PrecisionDrift | None = None  # with --precision bf16/fp16: the SVM scores vs fp32


def run_train_svm(
    work: WorkDir,
    inputs: SplitInputs,
    cfg: SvmConfig,
    finetuned: bool = True,
    force: bool = False,
    runtime: Runtime | None = None,
) -> SvmResult | UpToDate:
    """One linear SVM per class on LAYER features with hard-negative mining (heads.svm); the
    features are computed and scored on the runtime's device, each image's maps read ahead."""
    runtime = runtime or Runtime()
    inputs.check_images()
    inputs.to(runtime.device)
    head = feature_head(work, inputs, cfg.layer, finetuned, runtime.device)
    cache, classes = inputs.cache, inputs.dataset.classes
    made = {
        "inputs": inputs.inputs_fingerprint,
        "features": feature_settings_fingerprint(cache),
        "head": _head_fingerprint(work, finetuned, cfg.layer),
        "classes": list(classes),
        "svm": as_dict(cfg),
        **precision_setting(runtime),
    }
    name = inputs.model("svm")
    if not force and up_to_date(work, name, made):
        return UpToDate(work.model(name))

    def feats(image_id: str, boxes: np.ndarray) -> torch.Tensor:
        return window_features(cache, head, image_id, boxes, cfg.layer, runtime)

    scale = sample_norm_scale(
        inputs, lambda i, b: host(feats(i, b)), cfg.norm_sample_windows, cfg.seed, cfg.feature_norm
    )
    records = inputs.dataset.records
    positives = _positives(inputs, feats, scale, runtime)
    images = _negative_candidates(inputs, feats, scale, cfg, runtime)
    with progress_bar(len(records), "svm: hard negatives") as bar:

        def on_image(sizes: list[int]) -> None:
            bar.advance()
            bar.note(f"svm: hard negatives (cached {', '.join(map(str, sizes))})")

        scorer, stats = train_svms(positives, images, cfg, on_image, class_names=classes)
    path = work.save_model(
        name,
        {
            "fingerprint": fingerprint(made),
            "made_from": made,
            "weights": torch.from_numpy(scorer.weights),
            "bias": torch.from_numpy(scorer.bias),
            "scale": scale,
            "layer": cfg.layer,
            "finetuned": finetuned,
            "classes": list(classes),
            "stats": stats,
        },
    )
    drift = _drift(inputs, head, scorer, scale, cfg.layer, runtime)
    return SvmResult(path, scale, dict(zip(classes, stats, strict=True)), drift)


def _drift(
    inputs: SplitInputs,
    head: FcHead | None,
    scorer: LinearScorer,
    scale: float,
    layer: str,
    runtime: Runtime,
) -> PrecisionDrift | None:
    """With mixed precision, how far the trained SVMs' scores of the first image's proposals
    move from the scores of the same windows' fp32 features."""
    if runtime.precision == "fp32" or head is None:
        return None
    image_id = inputs.dataset.records[0].image_id
    boxes = inputs.proposals(image_id)[:FEATURE_CHUNK]
    fp32 = dataclasses.replace(runtime, precision="fp32")
    scores = [
        scorer.score_tensor(window_features(inputs.cache, head, image_id, boxes, layer, r) * scale)
        for r in (fp32, runtime)
    ]
    drift = PrecisionDrift.measure(*scores)
    log.info("train-svm: %s", drift.describe(runtime.precision, "SVM scores"))
    return drift


def _positives(
    inputs: SplitInputs, feats: Features, scale: float, runtime: Runtime
) -> list[np.ndarray]:
    """Per class, the scaled features of its ground-truth boxes over the split [P_k, D], on the
    host (the solver's side); each image's maps are read ahead on a reader thread."""
    records = inputs.dataset.records
    positives: list[list[np.ndarray]] = [[] for _ in inputs.dataset.classes]
    eta = EtaCheck("train-svm (positives)", len(records), "img", runtime, SHORTER_SVM)
    with read_ahead(inputs.cache, records, lambda r: (r.image_id, r.boxes)) as ready:
        for record in track(ready, len(records), "svm: positives"):
            if len(record.boxes):
                gt_feats = host(feats(record.image_id, record.boxes)) * scale
                for k in np.unique(record.labels):
                    positives[k].append(gt_feats[record.labels == k])
            eta.advance()
    return [np.concatenate(p) if p else np.zeros((0, inputs.cache.dim)) for p in positives]


def _negative_candidates(
    inputs: SplitInputs, feats: Features, scale: float, cfg: SvmConfig, runtime: Runtime
) -> Iterator[TrainingImage]:
    """Per image (lazily, in split order): the scaled features, on the device, of its
    deduplicated proposals that are a negative of at least one class, and of which classes."""
    classes = inputs.dataset.classes
    records = inputs.dataset.records
    eta = EtaCheck("train-svm (hard negatives)", len(records), "img", runtime, SHORTER_SVM)
    with read_ahead(inputs.cache, records, lambda r: (r.image_id, None)) as ready:
        for record in ready:
            boxes = inputs.proposals(record.image_id)
            keep = dedup_negatives(inputs.cache, record.image_id, boxes, cfg)
            windows = image_windows(record, boxes[keep], len(classes))
            proposals_only = ~windows.is_gt
            negatives = (windows.class_iou < cfg.neg_iou).T & proposals_only[None]
            rows = np.nonzero(negatives.any(axis=0))[0]
            x = feats(record.image_id, windows.boxes[rows]) * scale
            yield TrainingImage(features=x, negatives=negatives[:, rows])
            eta.advance()


def feature_head(
    work: WorkDir,
    inputs: SplitInputs,
    layer: str,
    finetuned: bool,
    device: torch.device | str = "cpu",
) -> FcHead | None:
    """The head whose LAYER features the SVMs use, on DEVICE (None for pool5)."""
    if layer == "pool5":
        return None
    if finetuned and inputs.features != "spp":
        raise SppdetError(
            f"--features {inputs.features} --layer {layer}: fine-tuning runs on SPP features "
            "only; pass --no-finetuned (the backbone's fc6/fc7) or --layer pool5"
        )
    if finetuned:
        return load_head(work, inputs).to(device)
    cfg = dataclasses.replace(FinetuneConfig(), dropout=0.0)
    head, origin, _ = build_head(
        inputs.cache, work, inputs.dataset.split, len(inputs.dataset.classes), cfg
    )
    log.info("features from the pre-trained head: %s", origin)
    return head.to(device).eval()


def _head_fingerprint(work: WorkDir, finetuned: bool, layer: str) -> str:
    if layer == "pool5":
        return "pool5"
    if not finetuned:
        return "pretrained"
    return str(work.load_model("finetune", "sppdet finetune")["fingerprint"])


def load_svm(work: WorkDir, inputs: SplitInputs) -> tuple[LinearScorer, dict[str, Any]]:
    name = inputs.model("svm")
    model = work.load_model(name, MADE_BY[name])
    if model["made_from"]["features"] != feature_settings_fingerprint(inputs.cache):
        raise SppdetError(
            f"{work.model(name)}: trained on features with other settings; rerun `{MADE_BY[name]}`"
        )
    if model["made_from"]["head"] != _head_fingerprint(work, model["finetuned"], model["layer"]):
        raise SppdetError(
            f"{work.model(name)}: trained on another fine-tuned head; rerun `{MADE_BY[name]}`"
        )
    return LinearScorer(model["weights"].numpy(), model["bias"].numpy()), model
