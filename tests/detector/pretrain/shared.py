"""Shared helpers of the tests in this folder."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from sppdet.detector.core.config import PretrainConfig
from sppdet.detector.pretrain.classifier import write_checkpoint
from sppdet.detector.pretrain.images import ColorStats, preprocessing_for
from sppdet.detector.pretrain.model import build_classifier

# Small enough to train in seconds on two busy cores.
CFG = PretrainConfig(
    sizes=(48, 64), epochs=2, batch_size=4, fc_dim=16, workers=0, device="cpu", seed=3
)

# Colour statistics of a made-up training set: a plain preprocessing for random checkpoints.
STATS = ColorStats(
    (110.0, 100.0, 90.0),
    (60.0, 55.0, 50.0),
    (1.0,) * 3,
    ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)),
)


def make_color_tree(root: Path, per_class: int = 12, splits=("train", "test")) -> Path:
    """An image-folder tree of noisy reddish vs bluish images of random sizes (trivially
    separable by colour), one sub-tree per split."""
    for s, split in enumerate(splits):
        for c, name in enumerate(("blue", "red")):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                rng = np.random.default_rng([s, c, i])
                h, w = (int(v) for v in rng.integers(50, 80, 2))
                image = rng.integers(0, 110, (h, w, 3)).astype(np.uint8)
                image[..., 2 if name == "red" else 0] += 130  # BGR on disk
                cv2.imwrite(str(folder / f"{i:03d}.png"), image)
    return root


def random_checkpoint(
    path: Path, classes: Sequence[str], background: bool, arch: str = "zf5"
) -> Path:
    """A checkpoint in pretrain's format with random weights (seeded), sizes 48 and 64."""
    model = build_classifier(arch, len(classes), (1, 2, 3, 6), 16, 0.5, seed=7, fc8_std=0.5)
    entry = {
        "classes": list(classes),
        "background": background,
        "source_kind": "detection" if background else "folder",
        "fc_dim": 16,
        "sizes": [48, 64],
        "crop_fraction": 0.875,
        "bg_per_image": 1,
        "bg_iou": 0.3,
    }
    return write_checkpoint(path, model.eval(), arch, preprocessing_for(arch, STATS), entry, "t")


def random_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Uniform noise pixels, uint8 RGB [h, w, 3]."""
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
