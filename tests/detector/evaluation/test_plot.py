"""Precision-recall curves: the arrays of ``reports/eval.json`` against hand-computed ones, and
the PNG pictures ``evaluate --plot`` draws."""

from __future__ import annotations

import json
import sys

import cv2
import numpy as np
import pytest

from sppdet.detector.core.errors import SppdetError
from sppdet.detector.data.synthetic import SyntheticObject, write_voc_image, write_voc_split
from sppdet.detector.data.voc import load_voc
from sppdet.detector.evaluation.coco import evaluate_coco, write_coco_results
from sppdet.detector.evaluation.plot import (
    PLOT_DPI,
    PLOT_SIZE_INCHES,
    class_curves,
    curve_file_names,
    draw_curves,
    eval_report,
)
from sppdet.detector.evaluation.voc import evaluate_voc
from tests.detector.evaluation.shared import dets

CATS = {"1": (10, 10, 29, 29), "2": (40, 40, 59, 59)}


@pytest.fixture
def dataset(tmp_path):
    """Two images with a cat each, and a class 'dog' with no box at all."""
    root = tmp_path / "voc"
    for image_id, box in CATS.items():
        objects = [SyntheticObject("cat", box)]
        write_voc_image(root, image_id, np.zeros((80, 80, 3), np.uint8), objects)
    write_voc_split(root, "test", list(CATS))
    return load_voc(root, "test", classes=("cat", "dog"))


# Score order: a hit on image 1, a false positive, then a hit on image 2.
FOUND = {
    "cat": dets([("1", 0.9, CATS["1"]), ("2", 0.8, (0, 0, 9, 9)), ("2", 0.7, CATS["2"])]),
    "dog": dets([("1", 0.5, (0, 0, 9, 9))]),
}


def test_the_report_holds_the_devkits_curve_and_counts_per_class(dataset):
    evaluation = evaluate_voc(dataset, FOUND, "voc2007")
    report = json.loads(json.dumps(eval_report(evaluation, split="test")))  # plain JSON
    cat = report["classes"]["cat"]
    # TP, FP, TP over npos 2: recall 1/2, 1/2, 1; precision 1, 1/2, 2/3
    assert cat["recall"] == [0.5, 0.5, 1.0]
    assert cat["precision"] == [1.0, 0.5, pytest.approx(2 / 3, rel=1e-15)]
    assert (cat["npos"], cat["true_positives"], cat["false_positives"]) == (2, 2, 1)
    # VOC07 11-point: precision 1 at recall 0 .. 0.5 (6 points), 2/3 at 0.6 .. 1 (5 points)
    assert cat["ap"] == pytest.approx((6 + 5 * 2 / 3) / 11)
    assert report["classes"]["dog"]["ap"] is None  # no ground truth
    assert report["split"] == "test" and report["map"] == cat["ap"]
    assert report["ap"] == {"cat": cat["ap"], "dog": None}  # the summary stays as it was


def test_a_coco_evaluations_curves_are_its_ap50_precision(dataset, tmp_path):
    results = write_coco_results(tmp_path / "r.json", dataset, FOUND)
    evaluation = evaluate_coco(dataset_root(dataset), results, "test", dataset.classes)
    cat = {c.name: c for c in class_curves(evaluation)}["cat"]
    # COCO's interpolated precision at IoU 0.5: max precision at recall >= r, so 1 up to 1/2,
    # then 2/3 up to recall 1
    points = np.linspace(0, 1, 101)
    expected = np.where(points <= 0.5 + 1e-9, 1.0, 2 / 3)
    np.testing.assert_allclose(cat.precision, expected, rtol=0, atol=4 * np.spacing(1))
    np.testing.assert_allclose(cat.recall, points)
    assert (cat.true_positives, cat.false_positives) == (2, 1)
    # the area under it is the class's AP50: 51 points at 1, 50 at 2/3
    assert cat.ap50 == pytest.approx((51 + 50 * 2 / 3) / 101) == pytest.approx(evaluation.stats[1])


def dataset_root(dataset):
    return dataset.records[0].path.parent.parent


def test_one_picture_per_class_with_ground_truth(dataset, tmp_path):
    evaluation = evaluate_voc(dataset, FOUND, "voc2007")
    written = draw_curves(evaluation, tmp_path / "plots")
    assert written == [tmp_path / "plots" / "pr_cat.png"]  # dog: no ground truth, no curve
    picture = cv2.imread(str(written[0]))
    width, height = (round(side * PLOT_DPI) for side in PLOT_SIZE_INCHES)
    assert picture.shape == (height, width, 3)
    assert len(np.unique(picture.reshape(-1, 3), axis=0)) > 10  # drawn, not a blank canvas


def test_file_names_are_safe_and_distinct():
    assert curve_file_names(["cat", "a/b c", "a?b c"]) == [
        "pr_cat.png",
        "pr_a_b_c_1.png",
        "pr_a_b_c_2.png",
    ]


def test_missing_matplotlib_is_one_line_naming_the_extra(dataset, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import fails
    with pytest.raises(SppdetError) as caught:
        draw_curves(evaluate_voc(dataset, FOUND, "voc2007"), tmp_path / "plots")
    assert str(caught.value) == "--plot: matplotlib is not installed ; pip install 'sppdet[plot]'"
