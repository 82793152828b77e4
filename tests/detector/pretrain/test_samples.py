"""Tests of ``sppdet.detector.pretrain.samples``."""

from __future__ import annotations

import dataclasses
import json
import shutil

import cv2
import numpy as np
import pytest

from sppdet.detector.core.boxes import iou_matrix
from sppdet.detector.core.errors import SppdetError
from sppdet.detector.data.datasets import load_dataset
from sppdet.detector.data.synthetic import make_synthetic_voc
from sppdet.detector.pretrain.samples import (
    BACKGROUND,
    detection_samples,
    expand_boxes,
    folder_samples,
    holdout_split,
    load_samples,
    sample_background,
)
from tests.detector.pretrain.shared import CFG

# ------------------------------------------------------------------------------------- sources


def test_folder_samples_use_the_split_folder_and_skip_non_images(tree, tmp_path):
    samples = folder_samples(tree, "train")
    assert samples.classes == ("blue", "red")
    assert samples.counts() == {"blue": 16, "red": 16}
    assert samples.root == str(tree / "train")
    assert np.isinf(samples.regions[:, 2:]).all() and (samples.regions[:, :2] == 0).all()
    # Without a split folder the tree itself holds the classes; stray files are ignored.
    flat = tmp_path / "flat"
    shutil.copytree(tree / "test", flat)
    (flat / "red" / "notes.txt").write_text("not an image")
    samples = folder_samples(flat, "trainval")
    assert samples.counts() == {"blue": 16, "red": 16}


def test_empty_class_folder_is_a_one_line_error(tree, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(tree / "train", root)
    (root / "green").mkdir()
    with pytest.raises(SppdetError, match=r"green: class 'green' holds no images") as err:
        folder_samples(root, "trainval")
    assert "\n" not in str(err.value)


def test_expand_boxes_by_hand():
    boxes = np.array([[10, 20, 29, 59], [0, 0, 9, 9]], np.float64)  # 20 x 40 and 10 x 10 pixels
    grown = expand_boxes(boxes, 1.5, width=100, height=100)
    # Centre (19.5, 39.5); 30 x 60 pixels -> x 5 .. 34, y 10 .. 69. The second is clipped at 0.
    np.testing.assert_allclose(grown[0], [5.0, 10.0, 34.0, 69.0])
    np.testing.assert_allclose(grown[1], [0.0, 0.0, 11.5, 11.5])


def test_background_boxes_overlap_no_object_by_03():
    objects = np.array([[10, 10, 120, 90], [150, 40, 199, 149]], np.float64)
    rng = np.random.default_rng(5)
    bg = sample_background(objects, 200, 150, 8, 0.3, rng)
    assert len(bg) == 8
    assert (bg[:, :2] >= 0).all() and (bg[:, 2] <= 199).all() and (bg[:, 3] <= 149).all()
    assert ((bg[:, 2] - bg[:, 0] + 1) >= 16).all()
    for box in bg:  # IoU with the +1 convention, written out
        for obj in objects:
            iw = min(box[2], obj[2]) - max(box[0], obj[0]) + 1
            ih = min(box[3], obj[3]) - max(box[1], obj[1]) + 1
            inter = max(iw, 0) * max(ih, 0)
            union = (
                (box[2] - box[0] + 1) * (box[3] - box[1] + 1)
                + (obj[2] - obj[0] + 1) * (obj[3] - obj[1] + 1)
                - inter
            )
            assert inter / union < 0.3
    same = sample_background(objects, 200, 150, 8, 0.3, np.random.default_rng(5))
    np.testing.assert_array_equal(bg, same)
    # Inside an object that fills the image, IoU is the box's share of the image: only boxes
    # smaller than 30% of it qualify (the IoU rule counts them as background).
    full = np.array([[0, 0, 199, 149]], np.float64)
    inside = sample_background(full, 200, 150, 64, 0.3, np.random.default_rng(0))
    share = (inside[:, 2] - inside[:, 0] + 1) * (inside[:, 3] - inside[:, 1] + 1) / (200 * 150)
    assert 0 < len(inside) < 64 and (share < 0.3).all()


def test_detection_dataset_gives_objects_and_background(tmp_path):
    voc = make_synthetic_voc(tmp_path / "voc", num_images=8, image_size=(96, 128), seed=2)
    cfg = dataclasses.replace(CFG, bg_per_image=2)
    samples = detection_samples(voc, "trainval", cfg)
    dataset = load_dataset(voc, "trainval")
    assert samples.classes == (BACKGROUND, *dataset.classes)
    objects, regions = [], []
    for record in dataset.records:
        keep = ~record.difficult
        objects += list(record.labels[keep] + 1)
        regions.append(expand_boxes(record.boxes[keep], 1 / 0.875, record.width, record.height))
    fg = samples.labels > 0
    assert sorted(samples.labels[fg].tolist()) == sorted(int(v) for v in objects)
    np.testing.assert_allclose(
        sorted(map(tuple, samples.regions[fg])), sorted(map(tuple, np.concatenate(regions)))
    )
    assert 0 < (~fg).sum() <= 2 * len(dataset.records)
    # Every background region's core box (shrunk back) has IoU < 0.3 with every object.
    by_path = {r.path: r for r in dataset.records}
    for k in np.flatnonzero(~fg):
        record = by_path[samples.paths[samples.image[k]]]
        r = samples.regions[k]
        core = expand_boxes(r[None], 0.875, record.width, record.height)
        if (r[:2] > 0).all() and r[2] < record.width - 1 and r[3] < record.height - 1:
            assert iou_matrix(core, record.boxes).max(initial=0) < 0.3 + 1e-9
    # The same seed gives the same samples.
    again = detection_samples(voc, "trainval", cfg)
    np.testing.assert_array_equal(samples.regions, again.regions)


def test_coco_json_gives_object_and_background_crops(tmp_path):
    images, annotations = [], []
    for i in range(2):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.full((80, 120, 3), 40 * i, np.uint8))
        images.append({"id": i + 1, "file_name": f"{i}.png", "width": 120, "height": 80})
        annotations.append(
            {
                "id": i + 1,
                "image_id": i + 1,
                "category_id": 7,
                "bbox": [10, 20, 30, 16],
                "area": 480,
                "iscrowd": 0,
            }
        )
    coco = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 7, "name": "thing"}],
    }
    (tmp_path / "train.json").write_text(json.dumps(coco))
    samples = load_samples(tmp_path / "train.json", "train", CFG)
    assert samples.classes == (BACKGROUND, "thing")
    assert samples.counts() == {BACKGROUND: 2, "thing": 2}
    # COCO [x, y, w, h] = [10, 20, 30, 16] covers pixels 10..39 x 20..35, grown by 8/7.
    expected = expand_boxes(np.array([[10, 20, 39, 35]]), 1 / 0.875, 120, 80)[0]
    np.testing.assert_allclose(samples.regions[samples.labels == 1], [expected, expected])


def test_detection_class_without_objects_is_an_error(tmp_path):
    voc = make_synthetic_voc(tmp_path / "voc", num_images=4, image_size=(96, 128), seed=2)
    with pytest.raises(SppdetError, match=r"no usable \(non-difficult\) objects of \['ring'\]"):
        load_samples(voc, "trainval", CFG, classes=(BACKGROUND, "circle", "ring"))


def test_holdout_takes_every_tenth_image_with_all_its_crops(tree):
    samples = folder_samples(tree, "train")
    train, held = holdout_split(samples, 10)
    assert held.tolist() == [9, 19, 29]
    assert sorted(train.tolist() + held.tolist()) == list(range(32))
    few = samples.subset(np.arange(5))
    assert len(holdout_split(few, 10)[1]) == 0
