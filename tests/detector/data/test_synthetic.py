"""Tests of ``sppdet.detector.data.synthetic``.

The synthetic VOC generator: determinism, VOC structure, tight boxes, occlusion, speed.
"""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from sppdet.detector.core.errors import SppdetError
from sppdet.detector.data.images import read_image
from sppdet.detector.data.synthetic import (
    DEFAULT_CLASSES,
    SHAPE_HUES,
    make_synthetic_voc,
    render_image,
)
from sppdet.detector.data.voc import load_voc


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "synthetic.json"
    }


def test_same_seed_same_bytes_other_seed_other_data(tmp_path):
    a = tree_bytes(make_synthetic_voc(tmp_path / "a", num_images=8, seed=5))
    b = tree_bytes(make_synthetic_voc(tmp_path / "b", num_images=8, seed=5))
    c = tree_bytes(make_synthetic_voc(tmp_path / "c", num_images=8, seed=6))
    assert a == b
    assert a.keys() == c.keys()
    assert all(a[k] != c[k] for k in a if k.startswith("JPEGImages"))


def test_more_images_keep_the_first_ones(tmp_path):
    small = tree_bytes(make_synthetic_voc(tmp_path / "s", num_images=4, seed=1))
    large = tree_bytes(make_synthetic_voc(tmp_path / "l", num_images=9, seed=1))
    for key in small:
        if not key.startswith("ImageSets"):
            assert small[key] == large[key], key


def test_voc_structure_and_splits(tmp_path):
    root = make_synthetic_voc(tmp_path / "voc", num_images=20, seed=0)
    ids = {p.stem for p in (root / "Annotations").glob("*.xml")}
    assert ids == {p.stem for p in (root / "JPEGImages").glob("*.jpg")}
    assert len(ids) == 20
    splits = {
        name: load_voc(root, name, DEFAULT_CLASSES).records
        for name in ("train", "val", "trainval", "test")
    }
    split_ids = {name: {r.image_id for r in recs} for name, recs in splits.items()}
    assert split_ids["train"] | split_ids["val"] == split_ids["trainval"]
    assert not split_ids["train"] & split_ids["val"]
    assert not split_ids["trainval"] & split_ids["test"]
    assert split_ids["trainval"] | split_ids["test"] == ids
    assert len(split_ids["test"]) == 10
    for record in splits["test"]:
        image = read_image(record.path)
        assert image.shape == (record.height, record.width, 3)
        assert 224 <= record.width <= 352 and 224 <= record.height <= 352
        b = record.boxes
        assert (b[:, 0] >= 0).all() and (b[:, 2] <= record.width - 1).all()
        assert (b[:, 1] >= 0).all() and (b[:, 3] <= record.height - 1).all()


def class_hue_mask(image: np.ndarray, name: str) -> np.ndarray:
    """Pixels whose colour is a saturated version of NAME's hue (within 20 degrees)."""
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV_FULL).astype(np.int32)
    target = round(SHAPE_HUES[name] / 360 * 256)
    distance = np.abs((hsv[..., 0] - target + 128) % 256 - 128)
    return (distance <= 20 * 256 // 360) & (hsv[..., 1] > 120) & (hsv[..., 2] > 60)


def test_boxes_are_tight_around_the_shape_colour():
    """Every edge of each clear object's box touches a pixel of its class colour, and a good
    share of the box has that colour: boxes are neither shifted nor loose."""
    checked = 0
    for i in range(25):
        rng = np.random.default_rng((11, i))
        image, objects = render_image(rng, 300, 260, ("circle", "square", "triangle"))
        for o in objects:
            if o.difficult or o.visible_fraction < 1:
                continue
            x1, y1, x2, y2 = o.box
            inside = class_hue_mask(image, o.name)[y1 : y2 + 1, x1 : x2 + 1]
            assert inside[0].any() and inside[-1].any(), o
            assert inside[:, 0].any() and inside[:, -1].any(), o
            assert inside.mean() > 0.3, o
            checked += 1
    assert checked > 20


def test_sizes_occlusion_and_difficult_flags(tmp_path):
    root = make_synthetic_voc(tmp_path / "voc", num_images=60, seed=2)
    records = [r for s in ("trainval", "test") for r in load_voc(root, s, DEFAULT_CLASSES).records]
    sides = np.concatenate([np.minimum(*(r.boxes[:, 2:] - r.boxes[:, :2] + 1).T) for r in records])
    long = np.concatenate([np.maximum(*(r.boxes[:, 2:] - r.boxes[:, :2] + 1).T) for r in records])
    difficult = np.concatenate([r.difficult for r in records])
    labels = np.concatenate([r.labels for r in records])
    assert set(labels.tolist()) == {0, 1, 2}
    assert difficult.any() and not difficult.all()
    assert (sides[~difficult] >= 16).all()  # small ones are flagged difficult
    assert long.max() > 0.6 * 224  # some objects fill most of the image
    assert np.median(long) < 150
    assert any(len(r.labels) == 0 for r in records)  # background-only images exist
    # Occlusion happens: some annotated objects are only partly visible.
    fractions = [
        o.visible_fraction
        for i in range(30)
        for o in render_image(np.random.default_rng((2, i)), 300, 300, DEFAULT_CLASSES)[1]
    ]
    assert min(fractions) < 0.9 and max(fractions) == 1.0


def test_generation_is_fast(tmp_path):
    start = time.perf_counter()
    make_synthetic_voc(tmp_path / "voc", num_images=50, seed=0)
    # About 0.6 s on two shared CPU cores; the bound leaves room for a loaded machine.
    assert time.perf_counter() - start < 3.0


def test_refuses_a_foreign_folder_and_regenerates_its_own(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(SppdetError, match="not empty and was not made by 'sppdet synth'"):
        make_synthetic_voc(tmp_path, num_images=4)
    assert (tmp_path / "mine.txt").read_text() == "keep me"
    root = make_synthetic_voc(tmp_path / "voc", num_images=6, seed=0)
    make_synthetic_voc(root, num_images=4, seed=0)  # fewer images: old ones are removed
    assert len(list((root / "Annotations").glob("*.xml"))) == 4


def test_bad_arguments():
    with pytest.raises(SppdetError, match="unknown synthetic classes"):
        make_synthetic_voc("/nonexistent/never", num_images=4, classes=("circle", "blob"))
    with pytest.raises(SppdetError, match="at least 2"):
        make_synthetic_voc("/nonexistent/never", num_images=1)
