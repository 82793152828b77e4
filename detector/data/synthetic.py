"""A small synthetic PASCAL VOC dataset: coloured shapes on textured backgrounds.

For tests and the demo. Each class is a shape with its own hue (circle red, square green, triangle
blue, ...), varied in size (from ~25 px to most of the image), aspect, rotation, saturation and
brightness, drawn over backgrounds of muted gradients, stripes, blotches and pixel noise. Shapes
overlap: a later shape hides an earlier one. As in VOC, a box covers the visible part of its
object; an object with less than ``DIFFICULT_VISIBLE`` of its pixels visible, or smaller than
``DIFFICULT_SIDE`` pixels, is flagged difficult, and one with under ``DROP_VISIBLE`` visible is not
annotated at all. Everything is a function of the seed: image i comes from the generator seeded
with (seed, i), so a dataset's first images do not change when more images are asked for.

``render_image`` draws one image and its objects; ``make_synthetic_voc`` writes a whole VOC tree
(JPEGs, annotation XML, split lists) and marks the folder with ``MARKER`` so that a rerun may
replace it. Stand-in detections for trying the evaluator are made in
``sppdet.detector.evaluation.synthetic``.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from sppdet.cache.atomic import write_json
from sppdet.detector.core.errors import SppdetError
from sppdet.detector.core.progress import track

# Hue in degrees (OpenCV stores hue/2) of each shape class.
SHAPE_HUES = {
    "circle": 0,
    "square": 120,
    "triangle": 240,
    "diamond": 60,
    "cross": 300,
    "ring": 180,
}


DEFAULT_CLASSES = ("circle", "square", "triangle")


MIN_SIDE = 25  # smallest regular object, pixels


TINY_SIDES = (10, 20)  # occasional tiny objects (difficult)


TINY_PROBABILITY = 0.08


EMPTY_PROBABILITY = 0.05  # images without objects (pure background)


DIFFICULT_VISIBLE = 0.45


DIFFICULT_SIDE = 16


DROP_VISIBLE = 0.1


JPEG_QUALITY = 92


MARKER = "synthetic.json"  # written into every generated tree: marks the folder as ours


SPLITS = ("train", "val", "trainval", "test")


@dataclass(frozen=True)
class SyntheticObject:
    name: str
    box: tuple[float, float, float, float]  # 0-based inclusive x1 y1 x2 y2 of the visible pixels
    difficult: bool = False
    truncated: bool = False
    visible_fraction: float = 1.0


def _hsv_to_rgb(hue_deg: float, sat: float, val: float) -> np.ndarray:
    hsv = np.array([[[hue_deg / 2, sat * 255, val * 255]]], np.float32).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Muted colours (saturation <= 0.3) so the saturated shapes stand out by colour and form."""
    xs = np.arange(width, dtype=np.float32)[None, :]
    ys = np.arange(height, dtype=np.float32)[:, None]
    colours = [
        _hsv_to_rgb(rng.uniform(0, 360), rng.uniform(0, 0.3), rng.uniform(0.25, 0.9))
        for _ in range(2)
    ]
    angle = rng.uniform(0, np.pi)
    t = xs * np.cos(angle) + ys * np.sin(angle)
    t = ((t - t.min()) / max(float(t.max() - t.min()), 1.0))[..., None]
    image = colours[0] * (1 - t) + colours[1] * t
    # Stripes of random period, direction and strength: sin(a + b) split into separable terms.
    period, phi = rng.uniform(6, 48), rng.uniform(0, np.pi)
    ax = 2 * np.pi * xs * np.cos(phi) / period
    by = 2 * np.pi * ys * np.sin(phi) / period
    stripes = np.sin(ax) * np.cos(by) + np.cos(ax) * np.sin(by)
    image += rng.uniform(0, 30) * stripes[..., None] * rng.uniform(0.5, 1.0, 3).astype(np.float32)
    # Low-frequency blotches.
    grid = rng.normal(0, 1, (rng.integers(3, 8), rng.integers(3, 8), 3)).astype(np.float32)
    image += rng.uniform(0, 25) * cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)
    return image


def _shape_mask(
    rng: np.random.Generator, name: str, width: int, height: int, side: float
) -> np.ndarray:
    """Binary mask (uint8 0/1) of one shape of roughly SIDE pixels, inside or across the border."""
    cx = rng.uniform(0.05, 0.95) * width
    cy = rng.uniform(0.05, 0.95) * height
    angle = rng.uniform(0, 360)
    aspect = np.exp(rng.uniform(-0.2, 0.2))
    half_w, half_h = side * np.sqrt(aspect) / 2, side / np.sqrt(aspect) / 2
    mask = np.zeros((height, width), np.uint8)
    centre = (round(cx), round(cy))
    if name in ("circle", "ring"):
        axes = (max(round(half_w), 1), max(round(half_h), 1))
        cv2.ellipse(mask, centre, axes, angle, 0, 360, 1, thickness=-1)
        if name == "ring":
            inner = (max(round(axes[0] * 0.5), 1), max(round(axes[1] * 0.5), 1))
            cv2.ellipse(mask, centre, inner, angle, 0, 360, 0, thickness=-1)
        return mask
    if name == "square":
        angle = rng.uniform(-25, 25)  # stays square-looking
        corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float64)
    elif name == "diamond":
        angle = rng.uniform(-15, 15)
        corners = np.array([[0, -1], [1, 0], [0, 1], [-1, 0]], np.float64)
    elif name == "triangle":
        apex = rng.uniform(-0.4, 0.4)
        corners = np.array([[apex, -1], [1, 1], [-1, 1]], np.float64)
    elif name == "cross":
        a = 0.35
        corners = np.array(
            [[-a, -1], [a, -1], [a, -a], [1, -a], [1, a], [a, a], [a, 1], [-a, 1], [-a, a],
             [-1, a], [-1, -a], [-a, -a]], np.float64,
        )  # fmt: skip
    else:
        raise SppdetError(f"unknown synthetic class {name!r}: choose from {', '.join(SHAPE_HUES)}")
    theta = np.deg2rad(angle)
    rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    points = (corners * [half_w, half_h]) @ rotation.T + [cx, cy]
    cv2.fillPoly(mask, [np.round(points).astype(np.int32)], 1)
    return mask


def render_image(
    rng: np.random.Generator,
    width: int,
    height: int,
    classes: Sequence[str],
    max_objects: int = 4,
) -> tuple[np.ndarray, list[SyntheticObject]]:
    """One RGB uint8 image and its annotations (objects in drawing order, back to front)."""
    image = _background(rng, width, height)
    n_objects = 0 if rng.random() < EMPTY_PROBABILITY else int(rng.integers(1, max_objects + 1))
    owner = np.full((height, width), -1, np.int16)  # index of the shape seen at each pixel
    drawn: list[tuple[str, int]] = []
    largest = 0.9 * min(width, height)
    for _ in range(n_objects):
        name = classes[int(rng.integers(len(classes)))]
        if rng.random() < TINY_PROBABILITY:
            side = rng.uniform(*TINY_SIDES)
        else:
            side = np.exp(rng.uniform(np.log(MIN_SIDE), np.log(largest)))
        mask = _shape_mask(rng, name, width, height, side).astype(bool)
        area = int(mask.sum())
        if area == 0:
            continue
        hue = SHAPE_HUES[name] + rng.uniform(-12, 12)
        colour = _hsv_to_rgb(hue % 360, rng.uniform(0.65, 1.0), rng.uniform(0.55, 1.0))
        # A soft shading ramp across the shape, so it is not one flat colour.
        rows, cols = np.nonzero(mask)
        ramp = (cols * rng.uniform(-1, 1) + rows * rng.uniform(-1, 1)) / max(side, 1)
        shade = 1 + 0.25 * (ramp - ramp.mean())
        image[mask] = np.clip(colour[None, :] * shade[:, None], 0, 255)
        owner[mask] = len(drawn)
        drawn.append((name, area))
    image += rng.uniform(2, 8) * rng.standard_normal(image.shape, dtype=np.float32)
    image = np.clip(image, 0, 255).astype(np.uint8)
    objects = []
    for index, (name, area) in enumerate(drawn):
        visible = owner == index
        count = int(visible.sum())
        if count < DROP_VISIBLE * area:
            continue
        cols, rows = np.flatnonzero(visible.any(axis=0)), np.flatnonzero(visible.any(axis=1))
        box = (int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1]))
        small = min(box[2] - box[0] + 1, box[3] - box[1] + 1) < DIFFICULT_SIDE
        objects.append(
            SyntheticObject(
                name=name,
                box=box,
                difficult=bool(count < DIFFICULT_VISIBLE * area or small),
                truncated=box[0] == 0 or box[1] == 0 or box[2] == width - 1 or box[3] == height - 1,
                visible_fraction=count / area,
            )
        )
    return image, objects


def _number_text(value: float) -> str:
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)


def _annotation_xml(
    image_id: str, width: int, height: int, objects: Sequence[SyntheticObject]
) -> str:
    parts = [
        "<annotation>\n\t<folder>VOC2007</folder>\n",
        f"\t<filename>{image_id}.jpg</filename>\n",
        "\t<source><database>sppdet synthetic shapes</database></source>\n",
        f"\t<size><width>{width}</width><height>{height}</height><depth>3</depth></size>\n",
        "\t<segmented>0</segmented>\n",
    ]
    for o in objects:
        x1, y1, x2, y2 = (_number_text(v + 1) for v in o.box)  # VOC files are 1-based
        parts.append(
            f"\t<object>\n\t\t<name>{o.name}</name>\n\t\t<pose>Unspecified</pose>\n"
            f"\t\t<truncated>{int(o.truncated)}</truncated>\n"
            f"\t\t<difficult>{int(o.difficult)}</difficult>\n"
            f"\t\t<bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax>"
            "</bndbox>\n\t</object>\n"
        )
    parts.append("</annotation>\n")
    return "".join(parts)


def write_voc_image(
    root: str | Path,
    image_id: str,
    image: np.ndarray,
    objects: Sequence[SyntheticObject],
    size: tuple[int, int] | None = None,
) -> None:
    """Write JPEGImages/<id>.jpg (IMAGE, RGB uint8) and Annotations/<id>.xml under ROOT.

    SIZE (width, height) is what the annotation records; it defaults to the image's own size.
    """
    root = Path(root)
    height, width = image.shape[:2]
    width, height = size or (width, height)
    ok, jpeg = cv2.imencode(
        ".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
    )
    if not ok:
        raise SppdetError(f"{root}: could not encode image {image_id} as JPEG")
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    (root / "JPEGImages" / f"{image_id}.jpg").write_bytes(jpeg.tobytes())
    (root / "Annotations" / f"{image_id}.xml").write_text(
        _annotation_xml(image_id, width, height, objects)
    )


def write_voc_split(root: str | Path, name: str, image_ids: Sequence[str]) -> None:
    """Write ImageSets/Main/<name>.txt listing IMAGE_IDS."""
    folder = Path(root) / "ImageSets" / "Main"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.txt").write_text("".join(f"{image_id}\n" for image_id in image_ids))


def write_voc_splits(root: Path, ids: Sequence[str], seed: int, test_fraction: float) -> None:
    """Write the four split files of a generated tree: a seeded TEST_FRACTION of IDS (at least
    one, and one left over) to test, the rest to trainval, split evenly into train and val."""
    order = np.random.default_rng((seed, len(ids), 1)).permutation(len(ids))
    n_test = min(max(round(len(ids) * test_fraction), 1), len(ids) - 1)
    trainval = sorted(ids[k] for k in order[n_test:])
    splits = {
        "test": sorted(ids[k] for k in order[:n_test]),
        "trainval": trainval,
        "train": trainval[0::2],
        "val": trainval[1::2],
    }
    for name in SPLITS:
        write_voc_split(root, name, splits[name])


def _prepare_folder(root: Path) -> None:
    """Refuse a non-empty folder that is not a synthetic tree; clear an old synthetic tree."""
    if root.exists() and not root.is_dir():
        raise SppdetError(f"{root}: exists and is not a folder; choose another --out")
    if root.is_dir() and any(root.iterdir()):
        if not (root / MARKER).is_file():
            raise SppdetError(
                f"{root}: folder is not empty and was not made by 'sppdet synth'; choose another "
                "--out or empty it"
            )
        for sub in ("Annotations", "JPEGImages", "ImageSets", "results"):
            shutil.rmtree(root / sub, ignore_errors=True)
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)


def make_synthetic_voc(
    out_dir: str | Path,
    num_images: int = 100,
    seed: int = 0,
    image_size: tuple[int, int] = (224, 352),
    classes: Sequence[str] = DEFAULT_CLASSES,
    max_objects: int = 4,
    test_fraction: float = 0.5,
) -> Path:
    """Write a VOC tree (Annotations/, JPEGImages/, ImageSets/Main/{train,val,trainval,test}.txt)
    of NUM_IMAGES images, width and height each drawn from IMAGE_SIZE (min, max). Returns OUT_DIR.

    Half the images (TEST_FRACTION) go to test, the rest to trainval, split evenly into train/val.
    """
    if num_images < 2:
        raise SppdetError("--num-images must be at least 2 (one trainval and one test image)")
    unknown = [c for c in classes if c not in SHAPE_HUES]
    if unknown or not classes:
        raise SppdetError(
            f"unknown synthetic classes {unknown}: choose from {', '.join(SHAPE_HUES)}"
        )
    root = Path(out_dir)
    _prepare_folder(root)
    params = {
        "num_images": num_images,
        "seed": seed,
        "image_size": list(image_size),
        "classes": list(classes),
        "max_objects": max_objects,
        "test_fraction": test_fraction,
    }
    write_json(root / MARKER, {"complete": False, **params})
    ids = [f"{i + 1:06d}" for i in range(num_images)]
    for i, image_id in enumerate(track(ids, len(ids), "synthetic images")):
        rng = np.random.default_rng((seed, i))
        width, height = (int(v) for v in rng.integers(image_size[0], image_size[1] + 1, 2))
        image, objects = render_image(rng, width, height, classes, max_objects)
        write_voc_image(root, image_id, image, objects)
    write_voc_splits(root, ids, seed, test_fraction)
    write_json(root / MARKER, {"complete": True, **params})
    return root


__all__ = [
    "DEFAULT_CLASSES",
    "SHAPE_HUES",
    "SyntheticObject",
    "make_synthetic_voc",
    "render_image",
    "write_voc_image",
    "write_voc_split",
    "write_voc_splits",
]
