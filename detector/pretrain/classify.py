"""The ``classify-eval`` stage: top-1 / top-5 accuracy of a ``pretrain`` checkpoint under the
three views of ``pretrain.views``.

Top-5 is reported when the classifier has more than five outputs (top-5 of five is always 1).
The samples come from ``pretrain.samples.load_samples`` with the checkpoint's classes and
settings, so a detection dataset's test split gives object and background crops exactly as in
training; its background boxes are a function of ``seed`` alone, the same for every checkpoint.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sppdet.detector.core.config import PretrainConfig
from sppdet.detector.core.device import resolve_device
from sppdet.detector.core.errors import SppdetError
from sppdet.detector.pretrain.classifier import Classifier, load_classifier
from sppdet.detector.pretrain.samples import SampleSet, load_samples
from sppdet.detector.pretrain.views import (
    VIEWS,
    ViewSettings,
    check_views,
    default_views,
    view_scores,
)

TOP5 = 5


@dataclass(frozen=True)
class Accuracy:
    """How often one view's highest scores hold the true class, over a set of samples."""

    samples: int
    top1: float  # NaN without samples
    top5: float | None  # None with five classes or fewer, where top-5 is always 1
    per_class_top1: dict[str, float]  # classes with samples only
    mean_class_top1: float  # NaN without samples

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ClassifyEvaluation:
    """The ``classify-eval`` report: a checkpoint's accuracy on a split under each view."""

    checkpoint: str
    data: str
    split: str
    backbone: str
    classes: tuple[str, ...]
    counts: dict[str, int]  # samples per class
    views: ViewSettings
    results: dict[str, Accuracy]  # view name (VIEWS) -> accuracy
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {
            "checkpoint": self.checkpoint,
            "data": self.data,
            "split": self.split,
            "backbone": self.backbone,
            "classes": list(self.classes),
            "counts": dict(self.counts),
            "views": {
                "size": self.views.size,
                "full_side": self.views.full_side,
                "view_scales": list(self.views.view_scales),
                "multiview_count": self.views.count,
            },
            "results": {name: result.to_json() for name, result in self.results.items()},
            "seconds": self.seconds,
        }


def topk_correct(scores: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Whether each label is among the K highest scores of its row -> bool [N]."""
    k = min(k, scores.shape[1])
    return (scores.topk(k, 1).indices == labels[:, None]).any(1)


def accuracy(scores: torch.Tensor, labels: torch.Tensor, classes: Sequence[str]) -> Accuracy:
    """top-1, top-5 (more than five classes), per-class top-1 and their mean."""
    top1 = topk_correct(scores, labels, 1)
    per_class = {
        name: float(top1[labels == c].float().mean())
        for c, name in enumerate(classes)
        if bool((labels == c).any())
    }
    return Accuracy(
        samples=len(labels),
        top1=float(top1.float().mean()) if len(labels) else float("nan"),
        top5=float(topk_correct(scores, labels, TOP5).float().mean())
        if len(classes) > TOP5 and len(labels)
        else None,
        per_class_top1=per_class,
        mean_class_top1=float(np.mean(list(per_class.values()))) if per_class else float("nan"),
    )


def classify_eval(
    ckpt: str | Path,
    data: str | Path,
    split: str = "test",
    size: int | None = None,
    full_side: int | None = None,
    view_scales: Sequence[int] | None = None,
    views: int = 10,
    batch_size: int = 32,
    workers: int = 2,
    device: str = "auto",
    seed: int = 0,
    progress: bool = True,
) -> ClassifyEvaluation:
    """Evaluate checkpoint CKPT on DATA's SPLIT under the three views.

    SIZE defaults to the largest training size; FULL_SIDE and VIEW_SCALES to SIZE divided by the
    crop fraction (256 for 224).
    """
    start = time.perf_counter()
    dev = resolve_device(device)
    clf = load_classifier(ckpt, dev)
    settings = default_views(size or clf.test_size, clf.crop_fraction, views)
    settings = replace(
        settings,
        full_side=full_side or settings.full_side,
        view_scales=tuple(view_scales) if view_scales else settings.view_scales,
    )
    check_views(settings)
    samples = _test_samples(clf, ckpt, data, split, seed)
    scores = view_scores(clf, samples, settings, batch_size, workers, dev, progress)
    labels = torch.as_tensor(samples.labels)
    return ClassifyEvaluation(
        checkpoint=str(ckpt),
        data=samples.root,
        split=split,
        backbone=clf.arch,
        classes=clf.classes,
        counts=samples.counts(),
        views=settings,
        results={name: accuracy(scores[name], labels, clf.classes) for name in VIEWS},
        seconds=time.perf_counter() - start,
    )


def _test_samples(
    clf: Classifier, ckpt: str | Path, data: str | Path, split: str, seed: int
) -> SampleSet:
    """DATA's SPLIT as samples of the checkpoint's classes, cut with its training settings."""
    record = clf.record
    sample_cfg = PretrainConfig(
        crop_fraction=clf.crop_fraction,
        bg_per_image=int(record.get("bg_per_image", PretrainConfig.bg_per_image)),
        bg_iou=float(record.get("bg_iou", PretrainConfig.bg_iou)),
    )
    samples = load_samples(data, split, sample_cfg, clf.classes, require_all=False, seed=seed)
    if samples.classes != clf.classes:
        raise SppdetError(
            f"{data}: a detection dataset gives the classes {list(samples.classes)}, the model "
            f"{ckpt} has {list(clf.classes)} (trained on an image-folder tree); evaluate it on one"
        )
    return samples
