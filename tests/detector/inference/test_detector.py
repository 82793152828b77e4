"""``Detector.predict``: the detect stage's detections, any input form, thresholds, calibration."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sppdet.cache.workdir import WorkDir
from sppdet.detector import Detections, Detector
from sppdet.detector.core.errors import SppdetError
from sppdet.detector.data.datasets import load_dataset
from sppdet.detector.data.images import read_image
from sppdet.detector.detection.stage import run_detect
from sppdet.detector.inference.model import model_from_work
from sppdet.detector.training.inputs import open_split
from tests.detector.inference.shared import CLASSES, assert_as_written, assert_same, tiny_config


@pytest.fixture(scope="module")
def detector(trained: tuple[Path, WorkDir]) -> Detector:
    return Detector.load(trained[1].root, device="cpu")


def test_predict_equals_what_detect_wrote(trained, detector) -> None:  # type: ignore[no-untyped-def]
    """Every image's detections, margin and box for box, equal the results files of the detect
    stage (run by the fixture on the split's stores), whose scores are the margins."""
    data, work = trained
    records = load_dataset(data, "test", CLASSES).records
    found = detector.predict([r.path for r in records], score_threshold=None)
    assert len(found) == len(records)
    limit = detector.scorer.cfg.max_per_split_factor * len(records)
    assert_as_written(found, records, work.detections("test"), limit)


def test_an_array_gives_what_its_file_gives(trained, detector) -> None:  # type: ignore[no-untyped-def]
    data, _ = trained
    path = load_dataset(data, "test", CLASSES).records[0].path
    rgb = read_image(path)
    mirrored_twice = np.flip(np.flip(rgb, 1).copy(), 1)  # a view with negative strides
    by_path, by_array, by_view = detector.predict([path, rgb, mirrored_twice], None)
    assert len(by_path) > 0
    assert_same(by_array, by_path)
    assert_same(by_view, by_path)
    assert_same(detector.predict(str(path), None)[0], by_path)  # a lone str is one image
    assert detector.predict([]) == []


def test_scores_sorted_and_thresholded(trained, detector) -> None:  # type: ignore[no-untyped-def]
    data, _ = trained
    path = load_dataset(data, "test", CLASSES).records[1].path
    every = detector.predict(path, score_threshold=None)[0]
    assert len(every) > 2 and np.all(np.diff(every.scores) <= 0)
    threshold = float(np.median(every.scores))
    kept = detector.predict(path, score_threshold=threshold)[0]
    assert 0 < len(kept) < len(every)
    assert_same(kept, every[every.scores > threshold])


def test_calibration_makes_the_scores(trained) -> None:  # type: ignore[no-untyped-def]
    """With a calibration stored, a score is 1 / (1 + exp(a m + b)) of its class's (a, b) and
    the margin stays; without one, the scores are the margins."""
    data, work = trained
    model = model_from_work(work)
    a, b = [-3.0, -2.0, -1.5], [0.5, -0.25, 1.0]
    calibrated = Detector.from_model(_with_calibration(model, {"a": a, "b": b}), "cpu")
    plain = Detector.from_model(_with_calibration(model, None), "cpu")
    path = load_dataset(data, "test", CLASSES).records[2].path
    with_p, without = calibrated.predict(path, None)[0], plain.predict(path, None)[0]
    assert with_p.calibrated and not without.calibrated
    np.testing.assert_array_equal(without.scores, without.margins)
    assert np.all(np.diff(with_p.scores) <= 0)
    by_margin = np.lexsort((-with_p.margins, with_p.labels))
    same = np.lexsort((-without.margins, without.labels))
    np.testing.assert_array_equal(with_p.margins[by_margin], without.margins[same])
    np.testing.assert_array_equal(with_p.boxes[by_margin], without.boxes[same])
    m, k = with_p.margins.astype(np.float64), with_p.labels
    expected = 1.0 / (1.0 + np.exp(np.take(a, k) * m + np.take(b, k)))
    # probabilities in (0, 1) stored as float32: half an ulp of 1 is 6e-8
    np.testing.assert_allclose(with_p.scores, expected, rtol=0, atol=1e-7)
    first = with_p.to_json()[0]
    assert first == {
        "class": CLASSES[int(k[0])],
        "score": float(with_p.scores[0]),
        "box": [float(v) for v in with_p.boxes[0]],
        "margin": float(with_p.margins[0]),
    }
    assert "margin" not in without.to_json()[0]


def _with_calibration(model: dict, calibration: dict | None) -> dict:
    return {**model, "svm": {**model["svm"], "calibration": calibration}}


def test_detections_slice_and_name() -> None:
    found = Detections(
        np.arange(12, dtype=np.float32).reshape(3, 4),
        np.array([0.9, 0.5, 0.1], np.float32),
        np.array([1.0, 0.0, -1.0], np.float32),
        np.array([1, 0, 1], np.int64),
        ("cat", "dog"),
        True,
    )
    assert len(found) == 3 and found.names == ["dog", "cat", "dog"]
    best = found[:2]
    assert best.names == ["dog", "cat"] and best.boxes.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert found[found.labels == 1].scores.tolist() == pytest.approx([0.9, 0.1])


def test_wrong_inputs_are_one_line_errors(detector, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"not an image at all")
    cases = [
        (np.zeros((10, 12, 3), np.float32), r"image 0 \(array\): dtype float32 ; pass uint8"),
        (np.zeros((10, 12), np.uint8), r"image 0 \(array\): shape \(10, 12\) ; pass H x W x 3"),
        (np.zeros((10, 12, 4), np.uint8), r"shape \(10, 12, 4\) ; pass H x W x 3"),
        (tmp_path / "missing.jpg", "missing.jpg: no such image file ; check the path"),
        (tmp_path, "a folder, not an image file ; pass the image files in it"),
        (garbage, "garbage.jpg: not a readable image"),
        (42, "predict: got int ; pass a path"),
        ([garbage.parent / "x", 3.5], "no such image file"),  # the first bad item is named
        ([np.zeros((4, 4, 3), np.uint8), 3.5], "predict: image 1 is a float ; pass a path"),
    ]
    for images, message in cases:
        with pytest.raises(SppdetError, match=message) as error:
            detector.predict(images)
        assert "\n" not in str(error.value)


def test_the_softmax_scorer_detects_as_detect_does(trained) -> None:  # type: ignore[no-untyped-def]
    """With ``scorer="softmax"`` the scores are the fine-tuned net's probabilities, and the
    detections those ``detect --scorer softmax`` writes (to WORK/detections/test-softmax)."""
    data, work = trained
    records = load_dataset(data, "test", CLASSES).records
    inputs = open_split(work, data, "test", CLASSES)
    written = run_detect(work, inputs, tiny_config().detect, scoring="softmax")
    detector = Detector.load(work.root, device="cpu", scorer="softmax")
    found = detector.predict([r.path for r in records], score_threshold=None)
    for dets in found:
        assert dets.calibrated and np.array_equal(dets.scores, dets.margins)
        assert np.all((dets.scores > 0) & (dets.scores < 1))
    limit = detector.scorer.cfg.max_per_split_factor * len(records)
    assert_as_written(found, records, written.out, limit)
