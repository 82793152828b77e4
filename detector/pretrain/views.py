"""The three test views of a pretrained classifier, and the scores of samples under each.

* ``center``: the central square of side crop_fraction (224/256) of the region's shorter side,
  resized to the test size (the training crops' centre position). Training's held-out test
  scores this view too (``predict_center``).
* ``full``: the whole region at its own aspect, resized so its shorter side is ``full_side``,
  pooled by whole-map SPP (paper §3.1.4, Table 3: shorter side 256 for 224 views, the same
  resolution as the centre crop; ``--full-side 224`` gives the region at the training size).
* ``multiview``: views on feature maps (paper §3.1.5). The region is resized so its shorter side
  is s (256 by default), conv1-5 run once on it and once on its mirror, and each view, a
  size x size window (four corners and the centre, or also the middle of each side) on both
  maps, is mapped to conv5 cells (``spp.geometry.boxes_to_cells``, the trunk's receptive-field
  geometry) and pooled with window SPP (``spp.pooler.WindowPooler``); fc6-fc8 score every view
  and the softmax scores are averaged. Several s may be given (the paper's multi-scale variant).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch

from sppdet.detector.backbones.preprocessing import Preprocessing
from sppdet.detector.backbones.trunk import trunk_spec
from sppdet.detector.core.errors import SppdetError
from sppdet.detector.core.progress import progress_bar
from sppdet.detector.pretrain.classifier import Classifier
from sppdet.detector.pretrain.images import (
    RegionImages,
    batches,
    load_region,
    ordered_map,
    raise_load_errors,
    resize_min_side,
)
from sppdet.detector.pretrain.model import SppClassifier
from sppdet.detector.pretrain.samples import SampleSet
from sppdet.detector.spp.geometry import MAPPING_RULES, boxes_to_cells, edge_shift, layer_geometry
from sppdet.detector.spp.pooler import WindowPooler

VIEWS = ("center", "full", "multiview")
# (column, row) of each window in a 3 x 3 grid of places: left/centre/right, top/middle/bottom.
POSITIONS = {
    5: ((0, 0), (2, 0), (0, 2), (2, 2), (1, 1)),  # four corners, then the centre
    9: tuple((x, y) for y in range(3) for x in range(3)),
}
VIEW_COUNTS = (10, 18)  # --views: the paper's 5 or 9 places, each also on the mirrored map


@dataclass(frozen=True)
class ViewSettings:
    size: int  # side of the centre crop and of every multi-view window
    full_side: int  # shorter side of the region in the full-image view
    view_scales: tuple[int, ...]  # shorter sides of the images the multi-view windows lie on
    positions: int = 5  # 5: four corners and the centre; 9: also the middle of each side
    flip: bool = True  # also the windows on the mirrored image's map
    mapping: str = "released"  # window -> cell rule (sppdet.detector.spp.geometry)

    @property
    def count(self) -> int:
        return self.positions * (2 if self.flip else 1) * len(self.view_scales)


def default_views(size: int, crop_fraction: float, views: int = 10) -> ViewSettings:
    """The paper's views for test size SIZE: crops of side SIZE from images whose shorter side is
    SIZE / crop_fraction (224 of 256); VIEWS = 10 (corners + centre, flipped) or 18."""
    if views not in VIEW_COUNTS:
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
    as in ``pretrain.images.center_crop``."""
    xs = np.array([0, (width - side) // 2, width - side], np.float64)
    ys = np.array([0, (height - side) // 2, height - side], np.float64)
    grid = np.array(POSITIONS[positions])
    x0, y0 = xs[grid[:, 0]], ys[grid[:, 1]]
    return np.stack([x0, y0, x0 + side - 1, y0 + side - 1], 1)


def predict_center(
    model: SppClassifier,
    samples: SampleSet,
    index: np.ndarray,
    size: int,
    pre: Preprocessing,
    fraction: float,
    batch_size: int,
    workers: int,
    device: torch.device,
) -> torch.Tensor:
    """Logits [len(index), K] (CPU) of the centre-crop view of the samples INDEX."""
    was_training = model.training
    model.eval()
    out = []
    data = RegionImages(samples, index, size, pre, fraction)
    with torch.inference_mode():
        for images, _, errors in batches(data, batch_size, workers):
            raise_load_errors(errors)
            out.append(model(images.to(device)).float().cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, len(samples.classes))


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
    geometry = layer_geometry(trunk_spec(trunk.arch)[1])  # the trunk's declared layers
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


def _region_or_error(samples: SampleSet, k: int) -> tuple[np.ndarray | None, str]:
    """Sample K's pixels, or the message of its load failure (raised in the consuming thread)."""
    try:
        return load_region(samples, k), ""
    except SppdetError as exc:
        return None, str(exc)


def _stack(rows: list[torch.Tensor], width: int) -> torch.Tensor:
    return torch.stack(rows) if rows else torch.zeros(0, width)
