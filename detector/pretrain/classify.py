"""``classify-eval``: top-1 / top-5 accuracy of a ``pretrain`` checkpoint under three views.

* ``center``: the central square of side crop_fraction (224/256) of the region's shorter side,
  resized to the test size (the training crops' centre position).
* ``full``: the whole region at its own aspect, resized so its shorter side is ``full_side``,
  pooled by whole-map SPP (paper §3.1.4, Table 3: shorter side 256 for 224 views, the same
  resolution as the centre crop; ``--full-side 224`` gives the region at the training size).
* ``multiview``: views on feature maps (paper §3.1.5). The region is resized so its shorter side
  is s (256 by default), conv1-5 run once on it and once on its mirror, and each view, a
  size x size window (four corners and the centre, or also the middle of each side) on both
  maps, is mapped to conv5 cells (``spp.boxes_to_cells``, the trunk's receptive-field geometry)
  and pooled with window SPP (``spp.WindowPooler``); fc6-fc8 score every view and the softmax
  scores are averaged. Several s may be given (the paper's multi-scale variant).

Top-5 is reported when the classifier has more than five outputs (top-5 of five is always 1).
The samples come from ``pretrain.load_samples`` with the checkpoint's classes and settings, so a
detection dataset's test split gives object and background crops exactly as in training; its
background boxes are a function of ``seed`` alone, the same for every checkpoint.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sppdet.detector.backbones.checkpoint import read_checkpoint
from sppdet.detector.backbones.preprocessing import Preprocessing
from sppdet.detector.backbones.trunk import build_trunk
from sppdet.detector.core.config import PretrainConfig
from sppdet.detector.core.device import resolve_device
from sppdet.detector.core.errors import SppdetError
from sppdet.detector.core.progress import progress_bar
from sppdet.detector.heads.fc import FcHead
from sppdet.detector.pretrain.images import (
    load_region,
    ordered_map,
    raise_load_errors,
    resize_min_side,
)
from sppdet.detector.pretrain.model import SppClassifier
from sppdet.detector.pretrain.samples import SampleSet, load_samples
from sppdet.detector.pretrain.train import CLASSIFIER_KEY, predict_center
from sppdet.detector.spp.bins import pyramid_dim
from sppdet.detector.spp.geometry import (
    MAPPING_RULES,
    boxes_to_cells,
    edge_shift,
    layer_geometry,
    module_layers,
)
from sppdet.detector.spp.pooler import WindowPooler

VIEWS = ("center", "full", "multiview")
# (column, row) of each window in a 3 x 3 grid of places: left/centre/right, top/middle/bottom.
POSITIONS = {
    5: ((0, 0), (2, 0), (0, 2), (2, 2), (1, 1)),  # four corners, then the centre
    9: tuple((x, y) for y in range(3) for x in range(3)),
}


# ---------------------------------------------------------------------------------- checkpoint


@dataclass
class Classifier:
    """A ``pretrain`` checkpoint, ready to score images."""

    model: SppClassifier
    preprocessing: Preprocessing
    arch: str
    classes: tuple[str, ...]
    background: bool
    sizes: tuple[int, ...]
    crop_fraction: float
    record: dict[str, Any]  # the checkpoint's classifier entry (training settings, history)

    @property
    def test_size(self) -> int:
        return max(self.sizes)


def load_classifier(path: str | Path, device: torch.device | str = "cpu") -> Classifier:
    """Read a checkpoint written by ``sppdet pretrain`` (a backbone checkpoint with fc8)."""
    record = read_checkpoint(path)
    entry = record.get(CLASSIFIER_KEY)
    if not isinstance(entry, dict) or record.get("head") is None:
        raise SppdetError(
            f"{path}: a backbone checkpoint without a classifier (fc8); classify-eval needs one "
            "written by `sppdet pretrain`"
        )
    arch, pyramid = record["arch"], tuple(record["head_pyramid"])
    trunk = build_trunk(arch)
    fc6 = record["head"]["fc6.weight"]
    head = FcHead(fc6.shape[1], fc6.shape[0], entry["fc8.weight"].shape[0], dropout=0.0)
    expected = pyramid_dim(pyramid, trunk.out_channels)
    if fc6.shape[1] != expected:
        raise SppdetError(
            f"{path}: fc6 reads {fc6.shape[1]} values, pyramid {pyramid} gives "
            f"{expected}; the checkpoint is inconsistent"
        )
    try:
        trunk.features.load_state_dict(record["trunk"])
        # fc6 was trained on the trunk's own activations: the head's other buffers (its input
        # scale) keep their defaults.
        head.load_state_dict(
            {
                **head.state_dict(),
                **record["head"],
                "fc8.weight": entry["fc8.weight"],
                "fc8.bias": entry["fc8.bias"],
            }
        )
    except RuntimeError as exc:
        raise SppdetError(f"{path}: weights do not fit {arch} ({str(exc)[:160]})") from None
    model = SppClassifier(trunk, pyramid, head).to(device).eval()
    return Classifier(
        model,
        record["preprocessing"],
        arch,
        tuple(entry["classes"]),
        bool(entry["background"]),
        tuple(int(s) for s in entry["sizes"]),
        float(entry["crop_fraction"]),
        entry,
    )


# --------------------------------------------------------------------------------------- views


@dataclass(frozen=True)
class ViewSettings:
    size: int  # side of the centre crop and of every multi-view window
    full_side: int  # shorter side of the region in the full-image view
    view_scales: tuple[int, ...]  # shorter sides of the images the multi-view windows lie on
    positions: int = 5  # 5: four corners and the centre; 9: also the middle of each side
    flip: bool = True  # also the windows on the mirrored image's map
    mapping: str = "released"  # window -> cell rule (sppdet.detector.spp)

    @property
    def count(self) -> int:
        return self.positions * (2 if self.flip else 1) * len(self.view_scales)


def default_views(size: int, crop_fraction: float, views: int = 10) -> ViewSettings:
    """The paper's views for test size SIZE: crops of side SIZE from images whose shorter side is
    SIZE / crop_fraction (224 of 256); VIEWS = 10 (corners + centre, flipped) or 18."""
    if views not in (10, 18):
        raise SppdetError(f"--views {views}: choose 10 (corners and centre) or 18 (also sides)")
    side = round(size / crop_fraction)
    return ViewSettings(size, side, (side,), positions=views // 2)


def check_views(views: ViewSettings) -> None:
    if views.size < 1 or views.full_side < 1:
        raise SppdetError("view sizes must be positive")
    if not views.view_scales or min(views.view_scales) < views.size:
        raise SppdetError(
            f"--view-scales {views.view_scales}: every scale must be at least the view size "
            f"{views.size}, so the windows fit in the image"
        )
    if views.positions not in POSITIONS or views.mapping not in MAPPING_RULES:
        raise SppdetError(f"unknown view layout {views.positions} / mapping {views.mapping!r}")


def view_windows(height: int, width: int, side: int, positions: int = 5) -> np.ndarray:
    """Square windows [P, 4] (0-based inclusive pixels) of SIDE in a HEIGHT x WIDTH image:
    corners and centre (5), or also the middle of each side (9). Centre offsets round down,
    as in ``pretrain.center_crop``."""
    xs = np.array([0, (width - side) // 2, width - side], np.float64)
    ys = np.array([0, (height - side) // 2, height - side], np.float64)
    grid = np.array(POSITIONS[positions])
    x0, y0 = xs[grid[:, 0]], ys[grid[:, 1]]
    return np.stack([x0, y0, x0 + side - 1, y0 + side - 1], 1)


def full_image_scores(
    clf: Classifier, region: np.ndarray, side: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Logits [K] of the whole REGION at its aspect, shorter side SIDE, whole-map SPP."""
    x = clf.preprocessing(resize_min_side(region, side), device)
    with torch.inference_mode():
        return clf.model(x)[0].float().cpu()


def multiview_scores(
    clf: Classifier,
    region: np.ndarray,
    views: ViewSettings,
    device: torch.device | str = "cpu",
    pooler: WindowPooler | None = None,
) -> torch.Tensor:
    """Softmax scores [V, K] of every view window on the conv5 maps (module doc)."""
    trunk, pyramid = clf.model.trunk, clf.model.pyramid
    geometry = layer_geometry(module_layers(trunk.features))
    shift = edge_shift(views.mapping, geometry)
    pooler = pooler or WindowPooler()
    pooled = []
    with torch.inference_mode():
        for scale in views.view_scales:
            image = resize_min_side(region, scale)
            x = clf.preprocessing(image, device)
            if views.flip:
                x = torch.cat([x, x.flip(-1)])
            maps = trunk(x)
            windows = view_windows(image.shape[0], image.shape[1], views.size, views.positions)
            cells = boxes_to_cells(windows, 1.0, geometry, maps.shape[2], maps.shape[3], shift)
            # The window layouts are mirror-symmetric: the same windows on the mirrored map are
            # the mirrored views.
            which = np.repeat(np.arange(len(maps)), len(cells))
            pooled.append(pooler.pool(list(maps), np.tile(cells, (len(maps), 1)), pyramid, which))
        return torch.softmax(clf.model.head(torch.cat(pooled)), 1).float().cpu()


def _region_or_error(samples: SampleSet, k: int) -> tuple[np.ndarray | None, str]:
    try:
        return load_region(samples, k), ""
    except SppdetError as exc:
        return None, str(exc)


# ------------------------------------------------------------------------------------ metrics


def topk_correct(scores: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Whether each label is among the K highest scores of its row -> bool [N]."""
    k = min(k, scores.shape[1])
    return (scores.topk(k, 1).indices == labels[:, None]).any(1)


def accuracy(scores: torch.Tensor, labels: torch.Tensor, classes: Sequence[str]) -> dict[str, Any]:
    """top-1, top-5 (more than five classes), per-class top-1 and their mean."""
    top1 = topk_correct(scores, labels, 1)
    per_class = {
        name: float(top1[labels == c].float().mean())
        for c, name in enumerate(classes)
        if bool((labels == c).any())
    }
    return {
        "samples": len(labels),
        "top1": float(top1.float().mean()) if len(labels) else float("nan"),
        "top5": float(topk_correct(scores, labels, 5).float().mean())
        if len(classes) > 5 and len(labels)
        else None,
        "per_class_top1": per_class,
        "mean_class_top1": float(np.mean(list(per_class.values()))) if per_class else float("nan"),
    }


# --------------------------------------------------------------------------------- evaluation


def view_scores(
    clf: Classifier,
    samples: SampleSet,
    views: ViewSettings,
    batch_size: int = 32,
    workers: int = 2,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> dict[str, torch.Tensor]:
    """Softmax scores [N, K] of every sample under each view of VIEWS."""
    check_views(views)
    device = torch.device(device)
    index = np.arange(len(samples))
    center = predict_center(
        clf.model,
        samples,
        index,
        views.size,
        clf.preprocessing,
        clf.crop_fraction,
        batch_size,
        workers,
        device,
    )
    full, multi = [], []
    pooler = WindowPooler()
    regions = ordered_map(partial(_region_or_error, samples), range(len(samples)), workers)
    bar = progress_bar(len(samples), "classify-eval", "img") if progress else nullcontext()
    with bar as b:
        for region, error in regions:
            raise_load_errors([error])
            full.append(torch.softmax(full_image_scores(clf, region, views.full_side, device), 0))
            multi.append(multiview_scores(clf, region, views, device, pooler).mean(0))
            if b is not None:
                b.advance()
    return {
        "center": torch.softmax(center, 1),
        "full": _stack(full, len(clf.classes)),
        "multiview": _stack(multi, len(clf.classes)),
    }


def _stack(rows: list[torch.Tensor], width: int) -> torch.Tensor:
    return torch.stack(rows) if rows else torch.zeros(0, width)


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
) -> dict[str, Any]:
    """Evaluate checkpoint CKPT on DATA's SPLIT under the three views; a JSON-ready report.

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
    record = clf.record
    sample_cfg = PretrainConfig(
        crop_fraction=clf.crop_fraction,
        bg_per_image=int(record.get("bg_per_image", 1)),
        bg_iou=float(record.get("bg_iou", 0.3)),
    )
    samples = load_samples(data, split, sample_cfg, clf.classes, require_all=False, seed=seed)
    if samples.classes != clf.classes:
        raise SppdetError(
            f"{data}: a detection dataset gives the classes {list(samples.classes)}, the model "
            f"{ckpt} has {list(clf.classes)} (trained on an image-folder tree); evaluate it on one"
        )
    scores = view_scores(clf, samples, settings, batch_size, workers, dev, progress)
    labels = torch.as_tensor(samples.labels)
    return {
        "checkpoint": str(ckpt),
        "data": samples.root,
        "split": split,
        "backbone": clf.arch,
        "classes": list(clf.classes),
        "counts": samples.counts(),
        "views": {
            "size": settings.size,
            "full_side": settings.full_side,
            "view_scales": list(settings.view_scales),
            "multiview_count": settings.count,
        },
        "results": {name: accuracy(scores[name], labels, clf.classes) for name in VIEWS},
        "seconds": time.perf_counter() - start,
    }
