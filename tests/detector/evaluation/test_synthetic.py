"""Tests of ``sppdet.detector.evaluation.synthetic``: stand-in detections and the synth demo."""

from __future__ import annotations

import numpy as np

from sppdet.detector.data.synthetic import DEFAULT_CLASSES, make_synthetic_voc
from sppdet.detector.data.voc import load_voc
from sppdet.detector.evaluation.synthetic import make_synthetic_demo, synthetic_detections
from sppdet.detector.evaluation.voc import evaluate_voc


def test_stand_in_detections_exercise_the_evaluator(tmp_path):
    root = make_synthetic_voc(tmp_path / "voc", num_images=40, seed=0)
    dataset = load_voc(root, "test", DEFAULT_CLASSES)
    detections = synthetic_detections(dataset, seed=0)
    again = synthetic_detections(dataset, seed=0)
    ids = {r.image_id for r in dataset.records}
    sizes = {r.image_id: (r.width, r.height) for r in dataset.records}
    for name in DEFAULT_CLASSES:
        d = detections[name]
        np.testing.assert_array_equal(d.scores, again[name].scores)
        assert set(d.image_ids.tolist()) <= ids
        w = np.array([sizes[i][0] for i in d.image_ids])
        h = np.array([sizes[i][1] for i in d.image_ids])
        assert (d.boxes[:, :2] >= 0).all() and (d.boxes[:, 2] <= w - 1).all()
        assert (d.boxes[:, 3] <= h - 1).all()
        assert len(np.unique(d.scores)) < len(d.scores)  # ties occur
    result = evaluate_voc(dataset, detections)
    for r in result.results:
        assert 0.2 < r.ap < 0.95 and r.false_positives > 0 and r.true_positives > 0


def test_demo_writes_results_for_every_class(tmp_path):
    demo = make_synthetic_demo(tmp_path / "demo", num_images=10, seed=0, with_detections=True)
    names = sorted(p.name for p in demo.results_dir.iterdir())
    assert names == [
        "coco_results_test.json",
        *sorted(f"comp4_det_test_{c}.txt" for c in DEFAULT_CLASSES),
    ]
    assert demo.split_sizes["test"] == 5 and demo.objects > 0
    assert make_synthetic_demo(tmp_path / "plain", num_images=4).results_dir is None
