"""Tests of ``sppdet.detector.data.crowded``: the small, crowded-object VOC generator."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from sppdet.detector.core.boxes import iou_matrix
from sppdet.detector.core.errors import SppdetError
from sppdet.detector.data.crowded import CROWD_CLASSES, make_crowded_voc, render_crowded
from sppdet.detector.data.datasets import load_dataset
from sppdet.detector.data.images import read_image

IMAGES = 6


@pytest.fixture(scope="module")
def crowded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_crowded_voc(tmp_path_factory.mktemp("crowded") / "voc", IMAGES, seed=3)


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_the_dataset_loader_reads_every_split(crowded: Path) -> None:
    splits = {name: load_dataset(crowded, name) for name in ("train", "val", "trainval", "test")}
    ids = {name: {r.image_id for r in d.records} for name, d in splits.items()}
    assert ids["trainval"] | ids["test"] == {f"{i:06d}" for i in range(1, IMAGES + 1)}
    assert not ids["trainval"] & ids["test"] and len(ids["test"]) == IMAGES // 2
    assert ids["train"] | ids["val"] == ids["trainval"]
    assert splits["test"].classes == tuple(sorted(CROWD_CLASSES))
    for record in splits["trainval"].records + splits["test"].records:
        assert read_image(record.path).shape == (record.height, record.width, 3)


def test_many_small_objects_per_image_none_hidden(crowded: Path) -> None:
    records = load_dataset(crowded, "trainval").records + load_dataset(crowded, "test").records
    for record in records:
        boxes = record.boxes.astype(np.float64)
        sides = boxes[:, 2:] - boxes[:, :2] + 1
        assert sides.min() >= 15 and sides.max() <= 60
        assert 20 <= len(boxes) <= 90 and not record.difficult.any()
        assert boxes[:, :2].min() >= 0
        assert (boxes[:, 2] < record.width).all() and (boxes[:, 3] < record.height).all()
        # objects touch but do not overlap: two boxes share well under half their union
        overlaps = iou_matrix(boxes, boxes) - np.eye(len(boxes))
        assert overlaps.max() < 0.5
    counts = [len(r.boxes) for r in records]
    assert np.mean(counts) >= 40  # crowded: VOC has 2.4 objects per image


def test_boxes_are_tight_and_objects_textured_on_a_textured_background() -> None:
    image = render_crowded(np.random.default_rng(8), 400, 300)
    assert 20 <= len(image.objects) <= 90
    grey = cv2.cvtColor(image.rgb, cv2.COLOR_RGB2GRAY).astype(np.float64)
    for index, obj in enumerate(image.objects):
        rows, cols = np.nonzero(image.labels == index)
        assert obj.box == (cols.min(), rows.min(), cols.max(), rows.max())
        assert grey[rows, cols].std() > 3.0, obj  # not one flat colour (noise alone: 2-6 / 3)
    # the background varies at large scales too, not only by pixel noise
    background = np.where(image.labels < 0, grey, np.nan)
    means = [np.nanmean(background[y : y + 50, x : x + 50]) for y in (0, 250) for x in (0, 350)]
    assert np.nanmax(means) - np.nanmin(means) > 5.0


def test_same_seed_same_bytes_and_more_images_keep_the_first(tmp_path: Path) -> None:
    a = tree_bytes(make_crowded_voc(tmp_path / "a", 2, seed=1))
    b = tree_bytes(make_crowded_voc(tmp_path / "b", 2, seed=1))
    c = tree_bytes(make_crowded_voc(tmp_path / "c", 2, seed=2))
    more = tree_bytes(make_crowded_voc(tmp_path / "d", 3, seed=1))
    assert a == b
    jpegs = [k for k in a if k.startswith("JPEGImages")]
    assert len(jpegs) == 2 and all(a[k] != c[k] for k in jpegs)
    assert all(more[k] == a[k] for k in jpegs)


def test_refuses_a_foreign_folder_and_replaces_its_own(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(SppdetError, match="not made by the crowded-set generator"):
        make_crowded_voc(tmp_path, 2)
    assert (tmp_path / "mine.txt").read_text() == "keep me"
    root = make_crowded_voc(tmp_path / "voc", 3)
    make_crowded_voc(root, 2)
    assert len(list((root / "Annotations").glob("*.xml"))) == 2
    with pytest.raises(SppdetError, match="at least 2 images"):
        make_crowded_voc(tmp_path / "one", 1)
