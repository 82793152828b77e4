"""Shared helpers of the tests in this folder."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from sppdet.detector.core.config import PretrainConfig

# Small enough to train in seconds on two busy cores.
CFG = PretrainConfig(
    sizes=(48, 64), epochs=2, batch_size=4, fc_dim=16, workers=0, device="cpu", seed=3
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
