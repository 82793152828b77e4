"""COCO both ways: the ``coco_results_<split>.json`` and ``instances_<split>.json`` that detect's
``finish`` writes are read by pycocotools as they are (``COCO(gt).loadRes(results)``, COCOeval),
with the APs expected by hand, for a VOC tree and for a COCO file with its own ids."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from sppdet.detector.core.config import DetectConfig
from sppdet.detector.data.datasets import load_dataset
from sppdet.detector.data.records import Dataset
from sppdet.detector.data.synthetic import SyntheticObject, write_voc_image, write_voc_split
from sppdet.detector.detection.postprocess import Candidates
from sppdet.detector.detection.stage import finish

CATS = [(4, 4, 23, 23), (40, 4, 59, 23), (4, 40, 23, 59), (40, 40, 59, 59)]  # 4 cats, apart
DOG = (70, 10, 89, 49)
HIDDEN_DOG = (70, 60, 89, 79)  # difficult: iscrowd, neither a hit nor a miss


def voc_split(root: Path) -> Dataset:
    """Split 'test': image 'b' with two cats and a dog, image 'a' with two cats and a difficult
    dog; listed b before a, so the COCO ids (1, 2) follow the split, not the names."""
    objects = {
        "b": [SyntheticObject("cat", CATS[0]), SyntheticObject("cat", CATS[1])]
        + [SyntheticObject("dog", DOG)],
        "a": [SyntheticObject("cat", CATS[2]), SyntheticObject("cat", CATS[3])]
        + [SyntheticObject("dog", HIDDEN_DOG, difficult=True)],
    }
    for image_id, objs in objects.items():
        write_voc_image(root, image_id, np.zeros((90, 100, 3), np.uint8), objs)
    write_voc_split(root, "test", list(objects))
    return load_dataset(root, "test")


class CandidateStore:
    """The candidates store ``finish`` reads, holding given candidates per image."""

    def __init__(self, candidates: dict[str, Candidates]) -> None:
        self.candidates = candidates

    def get(self, image_id: str, name: str) -> np.ndarray:
        return getattr(self.candidates[image_id], name)


def perfect_candidates(dataset: Dataset, skip: int | None = None) -> CandidateStore:
    """One candidate per non-difficult box (its own box, score falling in box order); with SKIP,
    the SKIP-th box of the split is left out (a known miss)."""
    per_image, n = {}, 0
    for record in dataset.records:
        rows = []
        for box, label, difficult in zip(
            record.boxes, record.labels, record.difficult, strict=True
        ):
            if not difficult and n != skip:
                rows.append((box, 1.0 - 0.01 * n, label))
            n += 1
        boxes = np.array([r[0] for r in rows], np.float32).reshape(-1, 4)
        per_image[record.image_id] = Candidates(
            boxes,
            boxes.copy(),
            np.array([r[1] for r in rows], np.float32),
            np.array([r[2] for r in rows], np.int64),
        )
    return CandidateStore(per_image)


def pycocotools_eval(gt_path: Path, results_path: Path) -> COCOeval:
    """What a user runs on detect's files: nothing but pycocotools."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        evaluator = COCOeval(gt, gt.loadRes(str(results_path)), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def test_a_voc_splits_files_score_one_when_perfect(tmp_path):
    dataset = voc_split(tmp_path / "voc")
    finish([perfect_candidates(dataset)], dataset, DetectConfig(), tmp_path / "out")
    gt_path = tmp_path / "out" / "instances_test.json"
    results_path = tmp_path / "out" / "coco_results_test.json"
    gt = json.loads(gt_path.read_text())
    assert [(i["id"], i["voc_id"], i["file_name"]) for i in gt["images"]] == [
        (1, "b", "b.jpg"),
        (2, "a", "a.jpg"),
    ]
    assert gt["categories"] == [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]
    results = json.loads(results_path.read_text())
    assert {type(r["image_id"]) for r in results} == {int} and len(results) == 5
    stats = pycocotools_eval(gt_path, results_path).stats
    assert stats[0] == pytest.approx(1.0) and stats[1] == pytest.approx(1.0)


def test_a_known_miss_gives_the_hand_computed_ap(tmp_path):
    dataset = voc_split(tmp_path / "voc")
    # Box 1 is b's second cat: 3 of 4 cats found, every detection right, so precision is 1 up
    # to recall 3/4 and 0 beyond: 76 of COCO's 101 recall points (0, 0.01, ..., 0.75) at every
    # IoU threshold. The dog is found; the difficult dog, never detected, costs nothing.
    finish([perfect_candidates(dataset, skip=1)], dataset, DetectConfig(), tmp_path / "out")
    evaluator = pycocotools_eval(
        tmp_path / "out" / "instances_test.json", tmp_path / "out" / "coco_results_test.json"
    )
    precision = evaluator.eval["precision"][:, :, :, 0, -1]  # [IoU, recall, class]
    cat_ap, dog_ap = (float(precision[:, :, k].mean()) for k in range(2))
    assert cat_ap == pytest.approx(76 / 101) and dog_ap == pytest.approx(1.0)
    assert evaluator.stats[0] == pytest.approx((76 / 101 + 1.0) / 2)


def coco_file(path: Path) -> Path:
    """Images 7 and 3, categories 9 (zebra) and 5 (ant), areas unlike w * h (segment areas)."""
    path.write_text(
        json.dumps(
            {
                "info": {"description": "tiny"},
                "images": [
                    {"id": 7, "file_name": "b.jpg", "width": 100, "height": 90},
                    {"id": 3, "file_name": "a.jpg", "width": 100, "height": 90},
                ],
                "annotations": [
                    {"id": 11, "image_id": 3, "category_id": 5, "bbox": [4, 4, 20, 20],
                     "area": 300.0, "iscrowd": 0},
                    {"id": 12, "image_id": 7, "category_id": 9, "bbox": [40.5, 4, 20, 30],
                     "area": 450.0, "iscrowd": 0},
                    {"id": 13, "image_id": 7, "category_id": 5, "bbox": [4, 50, 20, 20],
                     "area": 333.0, "iscrowd": 0},
                ],
                "categories": [{"id": 9, "name": "zebra"}, {"id": 5, "name": "ant"}],
            }
        )
    )  # fmt: skip
    return path


def test_a_coco_files_own_ids_and_annotations_come_back(tmp_path):
    source = coco_file(tmp_path / "instances_val.json")
    dataset = load_dataset(source, "val")
    finish([perfect_candidates(dataset)], dataset, DetectConfig(), tmp_path / "out")
    gt_path = tmp_path / "out" / "instances_val.json"
    results_path = tmp_path / "out" / "coco_results_val.json"
    original = json.loads(source.read_text())
    gt = json.loads(gt_path.read_text())
    # the file's own entries: ids, areas and all; images and categories in the file's order
    assert gt["annotations"] == original["annotations"] and gt["info"] == original["info"]
    assert [i["id"] for i in gt["images"]] == [7, 3]
    assert gt["categories"] == original["categories"]
    results = json.loads(results_path.read_text())
    assert sorted((r["image_id"], r["category_id"]) for r in results) == [(3, 5), (7, 5), (7, 9)]
    zebra = next(r for r in results if r["category_id"] == 9)
    assert zebra["bbox"] == pytest.approx([40.5, 4, 20, 30])  # float32 of the file's box
    assert pycocotools_eval(gt_path, results_path).stats[0] == pytest.approx(1.0)
    assert pycocotools_eval(source, results_path).stats[0] == pytest.approx(1.0)


def test_classes_left_out_are_left_out_of_the_ground_truth(tmp_path):
    source = coco_file(tmp_path / "instances_val.json")
    dataset = load_dataset(source, "val", classes=("ant",))
    finish([perfect_candidates(dataset)], dataset, DetectConfig(), tmp_path / "out")
    gt = json.loads((tmp_path / "out" / "instances_val.json").read_text())
    assert gt["categories"] == [{"id": 5, "name": "ant"}]
    assert [a["id"] for a in gt["annotations"]] == [11, 13]
    results = json.loads((tmp_path / "out" / "coco_results_val.json").read_text())
    assert {r["category_id"] for r in results} == {5}


def test_no_ground_truth_file_without_annotations(tmp_path):
    source = tmp_path / "image_info_test.json"  # COCO test-dev: images only
    info = json.loads(coco_file(tmp_path / "x.json").read_text())
    source.write_text(json.dumps({"images": info["images"], "categories": info["categories"]}))
    dataset = load_dataset(source, "test")
    box = np.array([[4, 4, 23, 23]], np.float32)
    found = Candidates(box, box, np.ones(1, np.float32), np.zeros(1, np.int64))  # an ant
    store = CandidateStore({"7": Candidates.empty(), "3": found})
    finish([store], dataset, DetectConfig(), tmp_path / "out")
    results = json.loads((tmp_path / "out" / "coco_results_test.json").read_text())
    assert [(r["image_id"], r["category_id"]) for r in results] == [(3, 5)]
    assert not (tmp_path / "out" / "instances_test.json").exists()
