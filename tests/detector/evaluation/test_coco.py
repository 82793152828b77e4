"""Tests of ``sppdet.detector.evaluation.coco``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sppdet.detector.core.errors import SppdetError
from sppdet.detector.data.coco import load_coco
from sppdet.detector.data.records import Dataset
from sppdet.detector.data.synthetic import SyntheticObject, write_voc_image, write_voc_split
from sppdet.detector.data.voc import load_voc
from sppdet.detector.evaluation.coco import dataset_to_coco, evaluate_coco, write_coco_results
from sppdet.detector.evaluation.voc import ClassDetections
from tests.detector.evaluation.shared import dets, write_tree


def test_coco_round_trip_through_load_coco(tmp_path):
    dataset = load_voc(write_tree(tmp_path / "voc"), "test")
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(dataset_to_coco(dataset)))
    back = load_coco(path)
    assert back.classes == dataset.classes
    for a, b in zip(dataset.records, back.records, strict=True):
        assert (a.width, a.height) == (b.width, b.height)
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.difficult, b.difficult)


def _gt_detections(dataset: Dataset, keep=lambda i: True) -> dict[str, ClassDetections]:
    out = {}
    for label, name in enumerate(dataset.classes):
        rows = [
            (r.image_id, 1.0 - 0.01 * n, tuple(b))
            for r in dataset.records
            for n, (b, lab, d) in enumerate(zip(r.boxes, r.labels, r.difficult, strict=True))
            if lab == label and not d and keep(r.image_id)
        ]
        out[name] = dets(rows)
    return out


def test_coco_perfect_detections_score_one(tmp_path):
    root = write_tree(tmp_path / "voc")
    dataset = load_voc(root, "test")
    results = write_coco_results(tmp_path / "res.json", dataset, _gt_detections(dataset))
    coco = evaluate_coco(root, results, "test")
    assert coco.stats[:3] == [pytest.approx(1.0)] * 3
    assert coco.ap == {"cat": pytest.approx(1.0), "dog": pytest.approx(1.0)}
    assert coco.npos == {"cat": 1, "dog": 2}


def test_coco_half_recall_is_51_of_101_points(tmp_path):
    # Find 2 of 4 boxes exactly, nothing else: precision 1 up to recall 0.5, then nothing.
    root = tmp_path / "voc"
    objs = [SyntheticObject("a", (10 * k, 10 * k, 10 * k + 15, 10 * k + 15)) for k in range(4)]
    write_voc_image(root, "1", np.zeros((80, 80, 3), np.uint8), objs)
    write_voc_split(root, "test", ["1"])
    dataset = load_voc(root, "test")
    found = {"a": dets([("1", 0.9, objs[0].box), ("1", 0.8, objs[2].box)])}
    coco = evaluate_coco(root, write_coco_results(tmp_path / "r.json", dataset, found), "test")
    assert coco.stats[0] == pytest.approx(51 / 101)
    assert coco.stats[1] == pytest.approx(51 / 101)


def test_coco_against_coco_json_ground_truth(tmp_path):
    dataset = load_voc(write_tree(tmp_path / "voc"), "test")
    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps(dataset_to_coco(dataset)))
    coco_dataset = load_coco(gt_path)
    results = write_coco_results(tmp_path / "r.json", coco_dataset, _gt_detections(coco_dataset))
    assert json.loads(results.read_text())[0]["image_id"] == 1  # integer ids for COCO data
    assert evaluate_coco(gt_path, results).stats[0] == pytest.approx(1.0)


def test_coco_results_with_unknown_image_or_category(tmp_path):
    root = write_tree(tmp_path / "voc")
    bad_image = [{"image_id": "999999", "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.5}]
    (tmp_path / "a.json").write_text(json.dumps(bad_image))
    with pytest.raises(SppdetError, match="image id '999999' is not in the dataset"):
        evaluate_coco(root, tmp_path / "a.json", "test")
    bad_cat = [{"image_id": "000001", "category_id": 7, "bbox": [0, 0, 5, 5], "score": 0.5}]
    (tmp_path / "b.json").write_text(json.dumps(bad_cat))
    with pytest.raises(SppdetError, match="category_id 7 is not one of"):
        evaluate_coco(root, tmp_path / "b.json", "test")
    (tmp_path / "c.json").write_text(json.dumps([{"image_id": "000001", "bbox": [0, 0, 5]}]))
    with pytest.raises(SppdetError, match="entry 0 is not"):
        evaluate_coco(root, tmp_path / "c.json", "test")


def test_coco_without_detections_scores_zero(tmp_path):
    root = write_tree(tmp_path / "voc")
    (tmp_path / "empty.json").write_text("[]")
    coco = evaluate_coco(root, tmp_path / "empty.json", "test")
    assert coco.stats[0] == 0.0 and coco.detections == 0
