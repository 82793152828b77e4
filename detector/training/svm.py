"""Svm: split out of the former ``training`` module."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
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
    MADE_BY,
    SplitInputs,
    WindowFeatures,
    _sample_norm_scale,
    feature_settings_fingerprint,
    up_to_date,
    window_features,
)

log = logging.getLogger(__name__)


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


def run_train_svm(
    work: WorkDir,
    inputs: SplitInputs,
    cfg: SvmConfig,
    finetuned: bool = True,
    force: bool = False,
) -> dict[str, Any]:
    """One linear SVM per class on LAYER features with hard-negative mining (svm.py)."""
    inputs.check_images()
    head = feature_head(work, inputs, cfg.layer, finetuned)
    cache, classes = inputs.cache, inputs.dataset.classes
    made = {
        "inputs": inputs.inputs_fingerprint,
        "features": feature_settings_fingerprint(cache),
        "head": _head_fingerprint(work, finetuned, cfg.layer),
        "classes": list(classes),
        "svm": as_dict(cfg),
    }
    name = inputs.model("svm")
    if not force and up_to_date(work, name, made):
        return {"skipped": True, "model": str(work.model(name))}

    def feats(image_id: str, boxes: np.ndarray) -> np.ndarray:
        return window_features(cache, head, image_id, boxes, cfg.layer)

    scale = _sample_norm_scale(inputs, feats, cfg.norm_sample_windows, cfg.seed, cfg.feature_norm)
    records = inputs.dataset.records
    positives: list[list[np.ndarray]] = [[] for _ in classes]
    for record in track(records, len(records), "svm: positives"):
        if len(record.boxes):
            gt_feats = feats(record.image_id, record.boxes) * scale
            for k in np.unique(record.labels):
                positives[k].append(gt_feats[record.labels == k])
    stacked = [np.concatenate(p) if p else np.zeros((0, cache.dim)) for p in positives]

    def images() -> Iterator[TrainingImage]:
        for record in records:
            boxes = inputs.proposals(record.image_id)
            keep = dedup_negatives(cache, record.image_id, boxes, cfg)
            windows = image_windows(record, boxes[keep], len(classes))
            proposals_only = ~windows.is_gt
            negatives = (windows.class_iou < cfg.neg_iou).T & proposals_only[None]
            rows = np.nonzero(negatives.any(axis=0))[0]
            x = feats(record.image_id, windows.boxes[rows]) * scale
            yield TrainingImage(features=x.astype(np.float32), negatives=negatives[:, rows])

    with progress_bar(len(records), "svm: hard negatives") as bar:

        def on_image(sizes: list[int]) -> None:
            bar.advance()
            bar.note(f"svm: hard negatives (cached {', '.join(map(str, sizes))})")

        scorer, stats = train_svms(stacked, images(), cfg, on_image, class_names=classes)
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
    return {"scale": scale, "stats": dict(zip(classes, stats, strict=True)), "model": str(path)}


def feature_head(work: WorkDir, inputs: SplitInputs, layer: str, finetuned: bool) -> FcHead | None:
    if layer == "pool5":
        return None
    if finetuned and inputs.features != "spp":
        raise SppdetError(
            f"--features {inputs.features} --layer {layer}: fine-tuning runs on SPP features "
            "only; pass --no-finetuned (the backbone's fc6/fc7) or --layer pool5"
        )
    if finetuned:
        return load_head(work, inputs)
    cfg = dataclasses.replace(FinetuneConfig(), dropout=0.0)
    head, origin, _ = build_head(
        inputs.cache, work, inputs.dataset.split, len(inputs.dataset.classes), cfg
    )
    log.info("features from the pre-trained head: %s", origin)
    return head.eval()


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
