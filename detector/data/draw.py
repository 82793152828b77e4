"""Pictures of detections a person can read: labelled boxes on the image, one colour per class.

Only detections with a probability of at least the threshold are drawn (``DRAW_SCORE_THRESHOLD``,
0.5, by default), each captioned with its class and probability as a percentage ("raccoon
87%"). Captions stay inside the image and, where the image has room, off each other: a caption
goes above its box, else inside its top edge, below it or inside its bottom edge, whichever is
free first; when none is, to the free place nearest to those, next to a caption already placed.
Better detections are placed first, so they get the preferred places. Captions are drawn over
every box, so no box line crosses a caption's text.

``Picture.save`` writes the format its file name says (JPEG for .jpg, PNG for .png, ...);
``picture_path`` names a picture after its source image, so a JPEG gives a JPEG and a PNG a PNG.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from sppdet.cache.atomic import write_bytes
from sppdet.detector.core.config import DRAW_SCORE_THRESHOLD
from sppdet.detector.core.errors import SppdetError

FONT = cv2.FONT_HERSHEY_SIMPLEX
JPEG_QUALITY = 95  # pictures are for looking at: little visible loss, a third of PNG's size
CAPTION_PADDING = 2  # pixels of caption background around the text
MIN_FONT_SCALE = 0.4  # OpenCV's Hershey font is unreadable below this
FONT_SCALE_PER_PIXEL = 1 / 700  # font scale per pixel of the image's shorter side
LINE_PER_PIXEL = 1 / 250  # box line width per pixel of the image's shorter side


def class_colour(k: int) -> tuple[int, int, int]:
    """A distinct, saturated RGB colour for class K (golden-angle hue steps)."""
    hue = int((k * 137.508) % 180)
    hsv = np.uint8([[[hue, 220, 255]]])
    r, g, b = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0]
    return int(r), int(g), int(b)


@dataclass(frozen=True)
class Caption:
    """One caption as drawn: its text and its background rectangle, x1 y1 x2 y2 in pixels
    (x2, y2 exclusive), inside the image."""

    text: str
    rect: tuple[int, int, int, int]


@dataclass
class Picture:
    """An RGB image with detections drawn on it, and the captions it carries."""

    rgb: np.ndarray
    captions: list[Caption] = field(default_factory=list)

    def save(self, path: str | Path) -> Path:
        """Write the picture (atomically) in the format PATH's suffix names: .jpg/.jpeg JPEG,
        .png PNG, or another format OpenCV writes (.bmp, .tif, .webp)."""
        path = Path(path)
        suffix = path.suffix.lower()
        params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if suffix in (".jpg", ".jpeg") else []
        bgr = cv2.cvtColor(self.rgb, cv2.COLOR_RGB2BGR)
        try:
            ok, encoded = cv2.imencode(suffix, bgr, params)
        except cv2.error:
            ok = False
        if not ok:
            raise SppdetError(
                f"{path}: no image format for the suffix {path.suffix!r} ; name the picture "
                ".jpg or .png"
            )
        write_bytes(path, encoded.tobytes())
        return path


def picture_path(source: str | Path, folder: str | Path) -> Path:
    """Where the picture of image file SOURCE goes in FOLDER: under the source's own name, so in
    its format (JPEG in, JPEG out; PNG in, PNG out)."""
    return Path(folder) / Path(source).name


def draw_detections(
    rgb: np.ndarray,
    boxes: np.ndarray,
    labels: np.ndarray,
    probabilities: np.ndarray,
    classes: Sequence[str],
    threshold: float = DRAW_SCORE_THRESHOLD,
) -> Picture:
    """Draw the detections of RGB (H x W x 3 uint8) whose probability is at least THRESHOLD:
    BOXES [N, 4] (x1 y1 x2 y2, 0-based inclusive pixels) of classes LABELS [N] (indices into
    CLASSES), captioned "class NN%" from PROBABILITIES [N] in [0, 1]."""
    probabilities = np.asarray(probabilities, np.float64).reshape(-1)
    shown = np.nonzero(probabilities >= threshold)[0]
    best_first = shown[np.argsort(-probabilities[shown], kind="stable")]
    canvas = np.ascontiguousarray(rgb.copy())
    height, width = canvas.shape[:2]
    side = min(height, width)
    line = max(1, round(side * LINE_PER_PIXEL))
    font_scale = max(MIN_FONT_SCALE, side * FONT_SCALE_PER_PIXEL)
    corners = np.rint(np.asarray(boxes, np.float64).reshape(-1, 4)).astype(np.int64)
    for i in best_first[::-1]:  # the best drawn last, on top
        x1, y1, x2, y2 = (int(v) for v in corners[i])
        cv2.rectangle(canvas, (x1, y1), (x2, y2), class_colour(int(labels[i])), line)
    captions: list[Caption] = []
    for i in best_first:
        text = f"{classes[int(labels[i])]} {round(100 * probabilities[i])}%"
        scale = _fitting_scale(text, font_scale, width)
        (w, h), base = cv2.getTextSize(text, FONT, scale, 1)
        size = (w + 2 * CAPTION_PADDING, h + base + 2 * CAPTION_PADDING)
        x, y = place_caption(tuple(int(v) for v in corners[i]), size, (width, height), captions)
        caption = Caption(text, (x, y, x + size[0], y + size[1]))
        captions.append(caption)
        colour = class_colour(int(labels[i]))
        cv2.rectangle(canvas, (x, y), (x + size[0] - 1, y + size[1] - 1), colour, -1)
        origin = (x + CAPTION_PADDING, y + CAPTION_PADDING + h)
        cv2.putText(canvas, text, origin, FONT, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return Picture(canvas, captions)


def _fitting_scale(text: str, scale: float, width: int) -> float:
    """SCALE, or less where TEXT would be wider than an image of WIDTH pixels."""
    (w, _), _ = cv2.getTextSize(text, FONT, scale, 1)
    room = width - 2 * CAPTION_PADDING
    return scale if w <= room else scale * room / w


def place_caption(
    box: tuple[int, int, int, int],
    size: tuple[int, int],
    image: tuple[int, int],
    placed: Sequence[Caption],
) -> tuple[int, int]:
    """Top-left corner of a caption of SIZE (w, h) for BOX (x1 y1 x2 y2) in an IMAGE (w, h):
    inside the image, and off the PLACED captions where the image has room. The anchors, in
    order of preference, are above the box, inside its top, below it and inside its bottom (at
    its left edge); the first free one wins, else the free place nearest to an anchor among
    those touching a placed caption's side, else (no room anywhere) the first anchor."""
    (w, h), (width, height) = size, image
    right, bottom = max(width - w, 0), max(height - h, 0)
    x1, y1, x2, y2 = box
    left = min(max(x1, 0), right)
    anchors = np.array([[left, min(max(y, 0), bottom)] for y in (y1 - h, y1, y2 + 1, y2 - h + 1)])
    if not placed:
        return int(anchors[0, 0]), int(anchors[0, 1])
    rects = np.array([c.rect for c in placed], np.int64)  # [P, 4], x2 y2 exclusive
    xs = np.unique(np.clip(np.concatenate([[left], rects[:, 2], rects[:, 0] - w]), 0, right))
    ys = np.concatenate([anchors[:, 1], rects[:, 3], rects[:, 1] - h])
    ys = np.unique(np.clip(ys, 0, bottom))
    grid = np.stack(np.meshgrid(xs, ys, indexing="ij"), axis=-1).reshape(-1, 2)
    spots = np.concatenate([anchors, grid])  # [S, 2]: the anchors first, in order
    hits = (
        (spots[:, None, 0] < rects[None, :, 2])
        & (rects[None, :, 0] < spots[:, None, 0] + w)
        & (spots[:, None, 1] < rects[None, :, 3])
        & (rects[None, :, 1] < spots[:, None, 1] + h)
    )
    free = ~hits.any(axis=1)
    if not free.any():
        return int(anchors[0, 0]), int(anchors[0, 1])
    distance = np.abs(spots[:, None, :] - anchors[None]).sum(axis=-1).min(axis=1)
    order = np.lexsort((np.arange(len(spots)), distance))  # nearest, then anchors' order
    x, y = spots[order[free[order]][0]]
    return int(x), int(y)
