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

Calibration (``calibrate``): the model also stores a Platt sigmoid per class (heads.calibration),
so a detection's margin becomes the probability that it is correct. It cannot be fitted on the
SVMs' own training windows: hard-negative mining pushes exactly those beyond the margin, so
their margins say little about an unseen image's. Every fifth training image is therefore held
out (``CALIBRATION_HOLDOUT_EVERY``) and a second SVM is trained the same way on the others (same
settings, mining and solver). It detects on the held-out images as detect does on a test image
(every proposal scored, margins above -1.5, NMS 0.3, top 100; no box regression, which is
trained after the SVMs), and each detection is correct or not as the VOC evaluation decides
(IoU >= 0.5 with a box of its class not already taken by a better detection; on a difficult box
it is left out). Detections rather than raw windows: NMS keeps one window per object and drops
the other correct ones, so on raccoon windows gave the survivors three times their true rate of
being correct (BENCHMARKS.md). The sigmoid is then applied to the margins of the SVMs trained on
all images, which detect uses unchanged (the results files rank by them): their scale is the
second SVM's (the same features, mean norm, C and hinge). Held-out images rather than k folds:
one extra SVM costs one more mining pass, not k. A class without a correct held-out detection
borrows the sigmoid fitted to every class's detections together. A model trained before
calibration existed gets its sigmoid from ``train-svm`` without retraining the SVMs.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sppdet.cache.fingerprint import fingerprint
from sppdet.cache.workdir import WorkDir
from sppdet.detector.core.boxes import nms
from sppdet.detector.core.config import (
    CALIBRATION_HOLDOUT_EVERY,
    CALIBRATION_IOU,
    DetectConfig,
    FinetuneConfig,
    SvmConfig,
    as_dict,
)
from sppdet.detector.core.errors import SppdetError
from sppdet.detector.core.progress import progress_bar, track
from sppdet.detector.data.records import ImageRecord
from sppdet.detector.detection.postprocess import Candidates, select, threshold_scores
from sppdet.detector.evaluation.ap import match_detections
from sppdet.detector.heads.calibration import CALIBRATION_KEY, PlattScaling, fit_platt
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
    same_window_features,
    sample_norm_scale,
    up_to_date,
    window_features,
)
from sppdet.detector.training.prefetch import read_ahead
from sppdet.detector.training.report import SvmReport
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
    calibration: PlattScaling | None = None  # None: too few training images to hold one out
    retrained: bool = True  # False: the SVMs were up to date and only calibrated


def run_train_svm(
    work: WorkDir,
    inputs: SplitInputs,
    cfg: SvmConfig,
    finetuned: bool = True,
    force: bool = False,
    runtime: Runtime | None = None,
    tensorboard: str | Path | None = None,
) -> SvmResult | UpToDate:
    """One linear SVM per class on LAYER features with hard-negative mining (heads.svm); the
    features are computed and scored on the runtime's device, each image's maps read ahead.
    Each class's statistics go to WORK/reports/<model>.csv and, given a folder, TENSORBOARD."""
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
    retrain = force or not up_to_date(work, name, made)
    if not retrain and CALIBRATION_KEY in work.load_model(name, MADE_BY[name]):
        return UpToDate(work.model(name))

    def feats(image_id: str, boxes: np.ndarray) -> torch.Tensor:
        return window_features(cache, head, image_id, boxes, cfg.layer, runtime)

    if not retrain:  # SVMs trained before calibration existed: calibrate them, keep them
        return _calibrate_saved(work, name, inputs, feats, cfg, runtime)
    report = SvmReport(work, name, tensorboard)  # a missing tensorboard refused before training
    scale = sample_norm_scale(
        inputs, lambda i, b: host(feats(i, b)), cfg.norm_sample_windows, cfg.seed, cfg.feature_norm
    )
    records = inputs.dataset.records
    positives, positive_images = _positives(inputs, feats, scale, runtime)
    images = _negative_candidates(inputs, feats, scale, cfg, runtime, records)
    with progress_bar(len(records), "svm: hard negatives") as bar:

        def on_image(sizes: list[int]) -> None:
            bar.advance()
            bar.note(f"svm: hard negatives (cached {', '.join(map(str, sizes))})")

        scorer, stats = train_svms(positives, images, cfg, on_image, class_names=classes)
    report.write(classes, positives, stats)
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
            "split": inputs.dataset.split,  # not fingerprinted: --fc-rank samples its windows
            "stats": stats,
        },
    )  # saved before calibrating: after an interrupt, the rerun only calibrates
    calibration = calibrate(inputs, feats, scale, positives, positive_images, cfg, runtime)
    _save_calibration(work, name, calibration)
    drift = _drift(inputs, head, scorer, scale, cfg.layer, runtime)
    stats_of = dict(zip(classes, stats, strict=True))
    return SvmResult(path, scale, stats_of, drift, _scaling(calibration))


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
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per class, the scaled features of its ground-truth boxes over the split [P_k, D], on the
    host (the solver's side), and the split index of each one's image [P_k]; each image's maps
    are read ahead on a reader thread."""
    records = inputs.dataset.records
    positives: list[list[np.ndarray]] = [[] for _ in inputs.dataset.classes]
    images: list[list[np.ndarray]] = [[] for _ in inputs.dataset.classes]
    eta = EtaCheck("train-svm (positives)", len(records), "img", runtime, SHORTER_SVM)
    with read_ahead(inputs.cache, records, lambda r: (r.image_id, r.boxes)) as ready:
        for index, record in enumerate(track(ready, len(records), "svm: positives")):
            if len(record.boxes):
                gt_feats = host(feats(record.image_id, record.boxes)) * scale
                for k in np.unique(record.labels):
                    positives[k].append(gt_feats[record.labels == k])
                    images[k].append(np.full(len(positives[k][-1]), index))
            eta.advance()
    dim = inputs.cache.dim
    return (
        [np.concatenate(p) if p else np.zeros((0, dim), np.float32) for p in positives],
        [np.concatenate(i) if i else np.zeros(0, np.int64) for i in images],
    )


def _negative_candidates(
    inputs: SplitInputs,
    feats: Features,
    scale: float,
    cfg: SvmConfig,
    runtime: Runtime,
    records: Sequence[ImageRecord],
) -> Iterator[TrainingImage]:
    """Per image of RECORDS (lazily, in order): the scaled features, on the device, of its
    deduplicated proposals that are a negative of at least one class, and of which classes."""
    classes = inputs.dataset.classes
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


def held_out_images(count: int) -> np.ndarray:
    """Split indices of the training images held out for calibration: every
    CALIBRATION_HOLDOUT_EVERY-th, or the last of a shorter split; none of a single image."""
    held = np.arange(CALIBRATION_HOLDOUT_EVERY - 1, count, CALIBRATION_HOLDOUT_EVERY)
    if len(held) == 0 and count > 1:
        held = np.array([count - 1])
    return held


def calibrate(
    inputs: SplitInputs,
    feats: Features,
    scale: float,
    positives: list[np.ndarray],
    positive_images: list[np.ndarray],
    cfg: SvmConfig,
    runtime: Runtime,
) -> dict[str, Any] | None:
    """The SVMs' Platt sigmoids (the module docstring says how), as the svm model stores them:
    {"a": [K], "b": [K]} and the held-out counts; None when no image can be held out.
    POSITIVES and POSITIVE_IMAGES are ``_positives``'."""
    records, classes = inputs.dataset.records, inputs.dataset.classes
    fitted = np.ones(len(records), bool)
    fitted[held_out_images(len(records))] = False
    trained = [k for k in range(len(classes)) if fitted[positive_images[k]].any()]
    if fitted.all() or not trained:
        log.warning("train-svm: too few training images to hold some out: SVMs not calibrated")
        return None
    fit_records = [r for r, f in zip(records, fitted, strict=True) if f]
    images = (
        TrainingImage(image.features, image.negatives[trained])
        for image in _negative_candidates(inputs, feats, scale, cfg, runtime, fit_records)
    )
    with progress_bar(len(fit_records), "svm: calibration SVMs") as bar:
        svms, _ = train_svms(
            [positives[k][fitted[positive_images[k]]] for k in trained],
            images,
            cfg,
            lambda _: bar.advance(),
        )
    held = [r for r, f in zip(records, fitted, strict=True) if not f]
    margins, correct = _held_out_detections(inputs, feats, scale, svms, trained, held)
    return _fit_sigmoids(margins, correct, trained, classes, len(held))


def detection_outcomes(record: ImageRecord, kept: Candidates, label: int) -> tuple[np.ndarray, ...]:
    """The detections of class LABEL among KEPT (one image's, after NMS) as (margins, correct),
    best first: correct when the devkit matches it to a box of the class (IoU >= CALIBRATION_IOU,
    each box once, by descending score); a match to a difficult box is left out, as the
    evaluation leaves it out."""
    mine = np.nonzero(kept.labels == label)[0]
    gt = record.labels == label
    difficult = np.zeros(len(record.boxes), bool)
    if len(record.difficult) == len(record.boxes):
        difficult = record.difficult.astype(bool)
    order, outcome = match_detections(
        np.zeros(len(mine), np.int64),
        kept.scores[mine],
        kept.windows[mine],
        record.boxes[gt].astype(np.float64).reshape(-1, 4),
        difficult[gt],
        np.zeros(1, np.int64),
        np.array([int(gt.sum())]),
        CALIBRATION_IOU,
    )
    counted = outcome >= 0
    return kept.scores[mine][order][counted], outcome[counted] == 1


def _held_out_detections(
    inputs: SplitInputs,
    feats: Features,
    scale: float,
    svms: LinearScorer,
    classes_of: list[int],
    records: list[ImageRecord],
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per SVM j (class CLASSES_OF[j]): the margins of its detections on RECORDS, found as
    detect finds them (every proposal scored, DetectConfig's threshold, NMS and top-k, no box
    regression), and whether each one is correct (``detection_outcomes``)."""
    margins: list[list[np.ndarray]] = [[] for _ in classes_of]
    correct: list[list[np.ndarray]] = [[] for _ in classes_of]
    detect = DetectConfig()
    with read_ahead(inputs.cache, records, lambda r: (r.image_id, None)) as ready:
        for record in track(ready, len(records), "svm: held-out detections"):
            boxes = inputs.proposals(record.image_id)
            if len(boxes) == 0:
                continue
            scores = host(svms.score_tensor(feats(record.image_id, boxes) * scale))
            rows, columns = threshold_scores(scores, detect.score_threshold)
            windows = boxes[rows].astype(np.float32)
            labels = np.asarray(classes_of, np.int64)[columns]  # SVM column -> class
            kept = select(Candidates(windows, windows, scores[rows, columns], labels), detect)
            for j, k in enumerate(classes_of):
                m, c = detection_outcomes(record, kept, k)
                margins[j].append(m)
                correct[j].append(c)
    return (
        [np.concatenate(m) if m else np.zeros(0, np.float32) for m in margins],
        [np.concatenate(c) if c else np.zeros(0, bool) for c in correct],
    )


def _fit_sigmoids(
    margins: list[np.ndarray],
    correct: list[np.ndarray],
    classes_of: list[int],
    classes: Sequence[str],
    held_out: int,
) -> dict[str, Any] | None:
    """One Platt fit per class with correct and wrong held-out detections; the other classes
    get the fit to every class's detections together (logged)."""
    usable = [j for j in range(len(classes_of)) if correct[j].any() and not correct[j].all()]
    if not usable:
        log.warning("train-svm: no correct held-out detection of any class: SVMs not calibrated")
        return None
    fits = {classes_of[j]: fit_platt(margins[j], correct[j]) for j in usable}
    borrowed = [name for k, name in enumerate(classes) if k not in fits]
    pooled = (0.0, 0.0)  # used by the borrowed classes only
    if borrowed:
        pooled = fit_platt(np.concatenate(margins), np.concatenate(correct))
        log.warning(
            "train-svm: no correct held-out detection of %s: calibrated on all classes' together",
            ", ".join(borrowed),
        )
    a, b = zip(*(fits.get(k, pooled) for k in range(len(classes))), strict=True)
    detections, right = [0] * len(classes), [0] * len(classes)
    for j, k in enumerate(classes_of):
        detections[k], right[k] = len(margins[j]), int(correct[j].sum())
    return {
        **PlattScaling(np.array(a), np.array(b)).to_dict(),
        "held_out_images": held_out,
        "detections": detections,
        "correct": right,
        "borrowed": borrowed,
    }


def _scaling(calibration: dict[str, Any] | None) -> PlattScaling | None:
    return None if calibration is None else PlattScaling.from_dict(calibration)


def _save_calibration(work: WorkDir, name: str, calibration: dict[str, Any] | None) -> Path:
    """Add CALIBRATION (None: none could be fitted) to WORK's svm model NAME, the rest kept."""
    model = work.load_model(name, MADE_BY[name])
    model[CALIBRATION_KEY] = calibration
    return work.save_model(name, model)


def _calibrate_saved(
    work: WorkDir,
    name: str,
    inputs: SplitInputs,
    feats: Features,
    cfg: SvmConfig,
    runtime: Runtime,
) -> SvmResult:
    """Calibrate the up-to-date SVMs of WORK's model NAME (trained before calibration existed)
    without retraining them."""
    model = work.load_model(name, MADE_BY[name])
    scale = float(model["scale"])
    positives, positive_images = _positives(inputs, feats, scale, runtime)
    calibration = calibrate(inputs, feats, scale, positives, positive_images, cfg, runtime)
    path = _save_calibration(work, name, calibration)
    stats = dict(zip(inputs.dataset.classes, model["stats"], strict=True))
    return SvmResult(path, scale, stats, None, _scaling(calibration), retrained=False)


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
    if not same_window_features(model["made_from"]["features"], inputs.cache.settings):
        raise SppdetError(
            f"{work.model(name)}: trained on features with other settings; rerun `{MADE_BY[name]}`"
        )
    if model["made_from"]["head"] != _head_fingerprint(work, model["finetuned"], model["layer"]):
        raise SppdetError(
            f"{work.model(name)}: trained on another fine-tuned head; rerun `{MADE_BY[name]}`"
        )
    return LinearScorer(model["weights"].numpy(), model["bias"].numpy()), model
