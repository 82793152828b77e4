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
    assert evaluate_coco(gt_path, results, "gt").stats[0] == pytest.approx(1.0)


def test_results_may_name_voc_images_by_their_id_or_by_detects_integer_id(tmp_path):
    root = write_tree(tmp_path / "voc")
    dataset = load_voc(root, "test")
    written = write_coco_results(tmp_path / "r.json", dataset, _gt_detections(dataset))
    entries = json.loads(written.read_text())
    assert sorted({e["image_id"] for e in entries}) == [1, 2]  # 000001, 000002 in split order
    by_voc_id = [{**e, "image_id": f"00000{e['image_id']}"} for e in entries]
    (tmp_path / "voc_ids.json").write_text(json.dumps(by_voc_id))
    for results in (written, tmp_path / "voc_ids.json"):
        assert evaluate_coco(root, results, "test").stats[0] == pytest.approx(1.0)


def test_counts_and_the_ap50_curve_of_one_hit_one_miss_and_one_false_positive(tmp_path):
    # Two cats (one per image); found: the first (score 0.9), and a box on no cat (0.8).
    root = tmp_path / "voc"
    cats = {"1": (10, 10, 29, 29), "2": (40, 40, 59, 59)}
    for image_id, box in cats.items():
        write_voc_image(
            root, image_id, np.zeros((80, 80, 3), np.uint8), [SyntheticObject("cat", box)]
        )
    write_voc_split(root, "test", list(cats))
    dataset = load_voc(root, "test")
    found = {"cat": dets([("1", 0.9, cats["1"]), ("2", 0.8, (0, 0, 9, 9))])}
    coco = evaluate_coco(root, write_coco_results(tmp_path / "r.json", dataset, found), "test")
    assert (coco.true_positives, coco.false_positives, coco.npos) == (
        {"cat": 1},
        {"cat": 1},
        {"cat": 2},
    )
    # Precision 1 up to recall 1/2 (COCO's points 0 .. 0.5: 51 of them), none beyond.
    expected = np.where(np.linspace(0, 1, 101) <= 0.5 + 1e-9, 1.0, 0.0)
    # COCOeval divides by tp + fp + np.spacing(1): precision 1 comes out 1 - 2.2e-16
    np.testing.assert_allclose(coco.precision["cat"], expected, rtol=0, atol=4 * np.spacing(1))
    np.testing.assert_allclose(coco.recall_points, np.linspace(0, 1, 101))


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
