"""Pictures of detections: labelled boxes on the image, one colour per class."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from sppdet.cache.atomic import write_bytes


def class_colour(k: int) -> tuple[int, int, int]:
    """A distinct, saturated RGB colour for class K (golden-angle hue steps)."""
    hue = int((k * 137.508) % 180)
    hsv = np.uint8([[[hue, 220, 255]]])
    r, g, b = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0]
    return int(r), int(g), int(b)


@dataclass
class Picture:
    rgb: np.ndarray

    def save(self, path: Path) -> Path:
        ok, png = cv2.imencode(".png", cv2.cvtColor(self.rgb, cv2.COLOR_RGB2BGR))
        if not ok:
            raise RuntimeError(f"PNG encoding failed for {path}")
        write_bytes(path, png.tobytes())
        return path


def draw_detections(
    rgb: np.ndarray,
    boxes: np.ndarray,
    labels: np.ndarray,
    scores: np.ndarray,
    classes: Sequence[str],
) -> Picture:
    """Draw BOXES (0-based, inclusive) with 'class score' captions, highest score on top."""
    canvas = np.ascontiguousarray(rgb.copy())
    thickness = max(1, round(min(rgb.shape[:2]) / 250))
    font_scale = max(0.4, min(rgb.shape[:2]) / 700)
    for i in np.argsort(scores, kind="stable"):  # low scores first, so the best are drawn last
        x1, y1, x2, y2 = (int(round(v)) for v in boxes[i])
        colour = class_colour(int(labels[i]))
        cv2.rectangle(canvas, (x1, y1), (x2, y2), colour, thickness)
        caption = f"{classes[int(labels[i])]} {scores[i]:.2f}"
        (w, h), base = cv2.getTextSize(caption, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
        top = max(0, y1 - h - base)
        cv2.rectangle(canvas, (x1, top), (x1 + w, top + h + base), colour, -1)
        cv2.putText(
            canvas,
            caption,
            (x1, top + h),
            cv2.FONT_HERSHEY_SIMPLEX,
            font_scale,
            (0, 0, 0),
            1,
            cv2.LINE_AA,
        )
    return Picture(canvas)
