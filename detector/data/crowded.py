"""A generated set of small, crowded objects in VOC layout, for measuring proposal recall.

Raccoon and VOC hold a few large objects per image; proposal settings tuned there can miss small
objects packed side by side (fruit on a stall, pebbles, cells, cars seen from above). Each image
here holds up to ``CROWD_COUNT`` objects whose boxes are ``OBJECT_SIDES`` (15-60) px a side,
touching but not overlapping, so every box is the whole object and exactly as annotated.

Appearance, so that colour and texture cues are as ambiguous as in photographs: the background is
fractal (1/f) noise through a two- or three-colour material palette, with fine grain, soft patches
of light and shade, dark cracks and unannotated gravel under 10 px. Objects are round, oblong
(rounded rectangles) or irregular (radially jittered polygons), anti-aliased (drawn at 4x and
area-averaged), with their own fractal texture, shading towards one light per image, darker rims,
a specular highlight on round ones and a soft shadow; ``CAMOUFLAGE_PROBABILITY`` of them take the
background's own colour. Then lighting falloff, lens blur, sensor noise and JPEG.

Everything is a function of the seed: image i comes from the generator seeded with (seed, i), so a
set's first images do not change when more images are asked for.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from sppdet.cache.atomic import write_json
from sppdet.detector.core.errors import SppdetError
from sppdet.detector.core.progress import track
from sppdet.detector.data.synthetic import SyntheticObject, write_voc_image, write_voc_splits

CROWD_CLASSES = ("round", "oblong", "irregular")
OBJECT_SIDES = (15, 60)  # every box's width and height, pixels, inclusive
CROWD_COUNT = (40, 90)  # objects asked for per image; packing may place fewer
# Most objects are placed next to one already placed (clusters, as on a stall or a beach).
NEIGHBOUR_PROBABILITY = 0.7
NEIGHBOUR_GAP = (0, 4)  # pixels between a neighbour and the object it is placed by
PLACEMENT_TRIES = 40  # random positions tried per object before it is given up
IMAGE_WIDTHS = (440, 560)
IMAGE_HEIGHTS = (330, 420)
CAMOUFLAGE_PROBABILITY = 0.3  # objects coloured like the background under them
SUPERSAMPLE = 4  # objects are drawn at this scale and area-averaged: anti-aliased edges
SHADOW_OFFSET = 3  # pixels a shadow falls away from the light
PATCH_MARGIN = SHADOW_OFFSET + 3  # room around an object's outline for its (blurred) shadow
ALPHA_INSIDE = 0.5  # a pixel belongs to the object (and its box) at this coverage or more
MARKER = "crowded.json"  # written into every generated tree: marks the folder as ours


@dataclass(frozen=True)
class CrowdedImage:
    rgb: np.ndarray  # uint8 [H, W, 3]
    objects: list[SyntheticObject]
    labels: np.ndarray  # int16 [H, W]: the index of the object covering each pixel, or -1


def fractal_noise(
    rng: np.random.Generator, height: int, width: int, cells: tuple[int, ...]
) -> np.ndarray:
    """Zero-mean, unit-std float32 [H, W]: random grids of CELLS px cells, bicubic-upsampled and
    weighted by cell size (a 1/f spectrum, as in natural textures)."""
    total = np.zeros((height, width), np.float32)
    for cell in cells:
        grid = rng.standard_normal((height // cell + 2, width // cell + 2)).astype(np.float32)
        total += cell * cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)
    return (total - total.mean()) / max(float(total.std()), 1e-6)


def _hsv(hue: float, sat: float, val: float) -> np.ndarray:
    """RGB float32 [3] in 0-255 of hue in degrees, saturation and value in 0-1."""
    pixel = np.array([[[hue / 2 % 180, sat * 255, val * 255]]], np.float32).astype(np.uint8)
    return cv2.cvtColor(pixel, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Float32 RGB: a material (fractal noise through a palette), grain, patches, cracks, gravel."""
    hue = rng.uniform(0, 360)
    palette = [
        _hsv(hue + rng.uniform(-25, 25), rng.uniform(0.05, 0.5), rng.uniform(0.25, 0.85))
        for _ in range(int(rng.integers(2, 4)))
    ]
    t = fractal_noise(rng, height, width, (96, 48, 24, 12))
    t = np.clip(0.5 + 0.3 * t, 0, 1) * (len(palette) - 1)
    low = np.minimum(t.astype(np.int64), len(palette) - 2)
    frac = (t - low)[..., None]
    colours = np.stack(palette)
    image = colours[low] * (1 - frac) + colours[low + 1] * frac
    image *= (1 + rng.uniform(0.04, 0.15) * fractal_noise(rng, height, width, (6, 3, 1)))[..., None]
    patches = fractal_noise(rng, height, width, (160, 80))
    image *= (1 + rng.uniform(0.05, 0.25) * np.tanh(patches))[..., None]
    for _ in range(int(rng.integers(0, 6))):  # cracks / seams
        start = rng.uniform(0, 1, 2) * (width, height)
        points = np.round(start + np.cumsum(rng.normal(0, 25, (8, 2)), axis=0)).astype(np.int32)
        tone = rng.uniform(0.4, 0.8)
        lines = np.zeros((height, width), np.float32)
        cv2.polylines(lines, [points], False, 1.0, int(rng.integers(1, 3)))
        image *= 1 - (1 - tone) * cv2.GaussianBlur(lines, (0, 0), 0.8)[..., None]
    for _ in range(int(rng.integers(0, 120))):  # gravel, smaller than any object
        centre = (int(rng.integers(width)), int(rng.integers(height)))
        radius = int(rng.integers(1, 5))
        shade = image[centre[1], centre[0]] * rng.uniform(0.6, 1.4)
        cv2.circle(image, centre, radius, shade.tolist(), -1, cv2.LINE_AA)
    return image


def _outline(rng: np.random.Generator, kind: str, side: float) -> np.ndarray:
    """Polygon [n, 2] (float, centred on 0) of one object whose longer extent is about SIDE."""
    angle = rng.uniform(0, np.pi)
    if kind == "round":
        theta = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        aspect = rng.uniform(0.65, 1.0)
        shape = np.stack([np.cos(theta), aspect * np.sin(theta)], 1) * side / 2
    elif kind == "oblong":
        long, short = side / 2, side / 2 * rng.uniform(0.35, 0.7)
        corner = short * rng.uniform(0.2, 0.6)
        theta = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        # a superellipse: a rectangle whose corners are rounder for a larger CORNER
        power = 2 + 8 * (1 - corner / short)
        c, s = np.cos(theta), np.sin(theta)
        x = long * np.sign(c) * np.abs(c) ** (2 / power)
        shape = np.stack([x, short * np.sign(s) * np.abs(s) ** (2 / power)], 1)
    else:
        count = int(rng.integers(7, 13))
        theta = np.sort(rng.uniform(0, 2 * np.pi, count))
        radius = side / 2 * rng.uniform(0.6, 1.0, count)
        shape = np.stack([np.cos(theta), np.sin(theta)], 1) * radius[:, None]
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return shape @ rotation.T


def _coverage(outline: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage (float32 [h, w] in 0-1) of OUTLINE on a patch with PATCH_MARGIN."""
    low = np.floor(outline.min(axis=0)).astype(np.int64) - PATCH_MARGIN
    high = np.ceil(outline.max(axis=0)).astype(np.int64) + PATCH_MARGIN
    size = high - low + 1
    big = np.zeros((size[1] * SUPERSAMPLE, size[0] * SUPERSAMPLE), np.uint8)
    points = (outline - low + 0.5) * SUPERSAMPLE - 0.5
    cv2.fillPoly(big, [np.round(points * 16).astype(np.int32)], 255, cv2.LINE_AA, shift=4)
    small = cv2.resize(big, (int(size[0]), int(size[1])), interpolation=cv2.INTER_AREA)
    return small.astype(np.float32) / 255


def _sample_object(rng: np.random.Generator) -> tuple[str, np.ndarray] | None:
    """(kind, coverage) of an object whose box sides lie in OBJECT_SIDES, or None."""
    kind = CROWD_CLASSES[int(rng.integers(len(CROWD_CLASSES)))]
    side = float(np.exp(rng.uniform(np.log(OBJECT_SIDES[0]), np.log(OBJECT_SIDES[1] * 1.1))))
    alpha = _coverage(_outline(rng, kind, side))
    inside = alpha >= ALPHA_INSIDE
    rows, cols = np.flatnonzero(inside.any(axis=1)), np.flatnonzero(inside.any(axis=0))
    if len(rows) == 0:
        return None
    sides = (cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1)
    if not all(OBJECT_SIDES[0] <= s <= OBJECT_SIDES[1] for s in sides):
        return None
    return kind, alpha


def _paint(
    rng: np.random.Generator, image: np.ndarray, alpha: np.ndarray, x0: int, y0: int,
    light: np.ndarray, kind: str,
) -> None:  # fmt: skip
    """Draw one object with coverage ALPHA at (X0, Y0) into IMAGE (float32, in place)."""
    h, w = alpha.shape
    region = image[y0 : y0 + h, x0 : x0 + w]
    # Shadow first, offset away from the light, on whatever lies under it.
    offset = -light * SHADOW_OFFSET
    shift = np.float32([[1, 0, offset[0]], [0, 1, offset[1]]])
    shadow = cv2.warpAffine(alpha, shift, (w, h))
    shadow = cv2.GaussianBlur(shadow, (0, 0), 1.5)
    region *= 1 - rng.uniform(0.2, 0.5) * shadow[..., None]
    inside = alpha >= ALPHA_INSIDE
    if rng.random() < CAMOUFLAGE_PROBABILITY:
        colour = region[inside].mean(axis=0) * rng.uniform(0.75, 1.3)
    else:
        colour = _hsv(rng.uniform(0, 360), rng.uniform(0.15, 0.9), rng.uniform(0.3, 0.95))
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    weight = alpha.sum()
    cx, cy = (alpha * xs).sum() / weight, (alpha * ys).sum() / weight
    radius = max(np.sqrt(weight / np.pi), 1.0)
    ramp = ((xs - cx) * light[0] + (ys - cy) * light[1]) / radius
    rim = cv2.distanceTransform(inside.astype(np.uint8), cv2.DIST_L2, 3)
    shade = (1 + 0.25 * ramp) * (0.7 + 0.3 * np.clip(rim / 3, 0, 1))
    texture = 1 + rng.uniform(0.03, 0.2) * fractal_noise(rng, h, w, (8, 4, 2))
    body = colour * (shade * texture)[..., None]
    if kind == "round":
        hx, hy = cx + light[0] * radius / 2, cy + light[1] * radius / 2  # the highlight
        spot = np.exp(-((xs - hx) ** 2 + (ys - hy) ** 2) / (2 * (radius / 4) ** 2))
        body += rng.uniform(20, 70) * spot[..., None]
    region[:] = region * (1 - alpha[..., None]) + body * alpha[..., None]


def _position(
    rng: np.random.Generator, placed: list[SyntheticObject], w: int, h: int, width: int,
    height: int,
) -> tuple[int, int]:  # fmt: skip
    """Top-left corner of a W x H patch: beside a placed object, or anywhere in the image."""
    if placed and rng.random() < NEIGHBOUR_PROBABILITY:
        x1, y1, x2, y2 = placed[int(rng.integers(len(placed)))].box
        direction = rng.uniform(0, 2 * np.pi)
        reach = (max(x2 - x1, y2 - y1) + max(w, h)) / 2 + rng.uniform(*NEIGHBOUR_GAP)
        cx = (x1 + x2) / 2 + reach * np.cos(direction)
        cy = (y1 + y2) / 2 + reach * np.sin(direction)
        return (
            int(np.clip(round(cx - w / 2), 0, width - w)),
            int(np.clip(round(cy - h / 2), 0, height - h)),
        )
    return int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))


def _free_spot(
    rng: np.random.Generator, taken: np.ndarray, placed: list[SyntheticObject], covered: np.ndarray
) -> tuple[int, int] | None:
    """Where a patch whose object covers COVERED touches no object yet: its top-left corner
    (x, y), or None after PLACEMENT_TRIES positions."""
    height, width = taken.shape
    h, w = covered.shape
    if w > width or h > height:
        return None
    for _ in range(PLACEMENT_TRIES):
        x0, y0 = _position(rng, placed, w, h, width, height)
        if not (taken[y0 : y0 + h, x0 : x0 + w] & covered).any():
            return x0, y0
    return None


def render_crowded(rng: np.random.Generator, width: int, height: int) -> CrowdedImage:
    """One image and its objects (every box OBJECT_SIDES a side, fully visible, not truncated)."""
    image = _background(rng, height, width)
    direction = rng.uniform(0, 2 * np.pi)
    light = np.array([np.cos(direction), np.sin(direction)], np.float32)
    taken = np.zeros((height, width), bool)  # pixels covered by an object so far
    labels = np.full((height, width), -1, np.int16)
    wanted = int(rng.integers(CROWD_COUNT[0], CROWD_COUNT[1] + 1))
    objects: list[SyntheticObject] = []
    for _ in range(wanted):
        sample = None
        while sample is None:
            sample = _sample_object(rng)
        kind, alpha = sample
        spot = _free_spot(rng, taken, objects, alpha > 0)
        if spot is None:
            continue
        x0, y0 = spot
        h, w = alpha.shape
        taken[y0 : y0 + h, x0 : x0 + w] |= alpha > 0
        _paint(rng, image, alpha, x0, y0, light, kind)
        inside = alpha >= ALPHA_INSIDE
        labels[y0 : y0 + h, x0 : x0 + w][inside] = len(objects)
        rows, cols = np.flatnonzero(inside.any(axis=1)), np.flatnonzero(inside.any(axis=0))
        box = (x0 + int(cols[0]), y0 + int(rows[0]), x0 + int(cols[-1]), y0 + int(rows[-1]))
        objects.append(SyntheticObject(kind, box))
    falloff = fractal_noise(rng, height, width, (max(width, height),))
    image *= (1 + rng.uniform(0.05, 0.2) * falloff)[..., None]
    image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.4, 0.9))
    image += rng.uniform(2, 6) * rng.standard_normal(image.shape, dtype=np.float32)
    return CrowdedImage(np.clip(np.rint(image), 0, 255).astype(np.uint8), objects, labels)


def _prepare_folder(root: Path) -> None:
    """Refuse a non-empty folder that is not a crowded tree; clear an old crowded tree."""
    if root.exists() and not root.is_dir():
        raise SppdetError(f"{root}: exists and is not a folder; choose another output folder")
    if root.is_dir() and any(root.iterdir()):
        if not (root / MARKER).is_file():
            raise SppdetError(
                f"{root}: folder is not empty and was not made by the crowded-set generator; "
                "choose another output folder or empty it"
            )
        for sub in ("Annotations", "JPEGImages", "ImageSets"):
            shutil.rmtree(root / sub, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)


def make_crowded_voc(
    out_dir: str | Path, num_images: int = 40, seed: int = 0, test_fraction: float = 0.5
) -> Path:
    """Write a VOC tree of NUM_IMAGES crowded images (Annotations/, JPEGImages/,
    ImageSets/Main/{train,val,trainval,test}.txt) to OUT_DIR and return it.

    TEST_FRACTION of the images go to test, the rest to trainval, split evenly into train/val.
    """
    if num_images < 2:
        raise SppdetError("the crowded set needs at least 2 images (one trainval, one test)")
    root = Path(out_dir)
    _prepare_folder(root)
    params = {"num_images": num_images, "seed": seed, "test_fraction": test_fraction}
    write_json(root / MARKER, {"complete": False, **params})
    ids = [f"{i + 1:06d}" for i in range(num_images)]
    for i, image_id in enumerate(track(ids, len(ids), "crowded images")):
        rng = np.random.default_rng((seed, i))
        width = int(rng.integers(IMAGE_WIDTHS[0], IMAGE_WIDTHS[1] + 1))
        height = int(rng.integers(IMAGE_HEIGHTS[0], IMAGE_HEIGHTS[1] + 1))
        crowd = render_crowded(rng, width, height)
        write_voc_image(root, image_id, crowd.rgb, crowd.objects)
    write_voc_splits(root, ids, seed, test_fraction)
    write_json(root / MARKER, {"complete": True, **params})
    return root
