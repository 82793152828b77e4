"""Tiny generated VOC trees, imported by the proposal, CLI and end-to-end tests.

Scenes are a smooth, lightly noisy background with a few flat-coloured rectangles, the objects,
saved as lossless PNG so that every decoder sees the same pixels.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

Box = tuple[int, int, int, int]  # 0-based inclusive x1 y1 x2 y2

COLOURS = ((220, 40, 40), (40, 200, 60), (40, 60, 220), (230, 210, 40), (200, 60, 200))


def draw_scene(height: int, width: int, boxes: Sequence[Box], seed: int) -> np.ndarray:
    """uint8 RGB: a diagonal grey ramp with noise (sigma 4) and each box filled with a colour."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(70, 140, width)[None, :] + np.linspace(0, 30, height)[:, None]
    image = np.repeat(ramp[:, :, None], 3, axis=2) + rng.normal(0, 4, (height, width, 3))
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        image[y1 : y2 + 1, x1 : x2 + 1] = COLOURS[i % len(COLOURS)]
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def write_annotation(
    path: Path, filename: str, width: int, height: int, boxes: Sequence[Box],
    difficult: Sequence[bool] | None = None,
) -> None:  # fmt: skip
    objects = []
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        hard = int(bool(difficult[i])) if difficult is not None else 0
        objects.append(
            f"<object><name>thing</name><difficult>{hard}</difficult><bndbox>"
            f"<xmin>{x1 + 1}</xmin><ymin>{y1 + 1}</ymin><xmax>{x2 + 1}</xmax><ymax>{y2 + 1}</ymax>"
            "</bndbox></object>"
        )
    path.write_text(
        f"<annotation><filename>{filename}</filename><size><width>{width}</width>"
        f"<height>{height}</height><depth>3</depth></size>{''.join(objects)}</annotation>"
    )


def make_voc(root: Path, scenes: dict[str, tuple[np.ndarray, list[Box]]], split: str) -> Path:
    """A VOC tree at ROOT with one PNG + XML per scene (id -> (RGB image, boxes))."""
    for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for image_id, (rgb, boxes) in scenes.items():
        cv2.imwrite(str(root / "JPEGImages" / f"{image_id}.png"), rgb[:, :, ::-1])
        height, width = rgb.shape[:2]
        write_annotation(
            root / "Annotations" / f"{image_id}.xml", f"{image_id}.png", width, height, boxes
        )
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(scenes) + "\n")
    return root


SCENE_BOXES: list[list[Box]] = [
    [(20, 15, 79, 74)],
    [(10, 40, 59, 109), (90, 20, 149, 59)],
    [(40, 30, 129, 99)],
    [(5, 5, 44, 44), (70, 50, 139, 109)],
    [(60, 10, 109, 89)],
]


def scenes(
    count: int = len(SCENE_BOXES), height: int = 120, width: int = 160
) -> dict[str, tuple[np.ndarray, list[Box]]]:
    return {
        f"img{i:02d}": (
            draw_scene(height, width, SCENE_BOXES[i % len(SCENE_BOXES)], i),
            SCENE_BOXES[i % len(SCENE_BOXES)],
        )
        for i in range(count)
    }


def tiny_voc_tree(folder: Path) -> Path:
    """Five 160x120 scenes, split 'trainval' (use as a fixture: ``tiny_voc``)."""
    return make_voc(folder / "voc", scenes(), "trainval")


def file_digests(root: Path) -> dict[str, str]:
    """SHA-256 of every file in ROOT (a store: its index, shards and any stray temporary)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.iterdir())}
