"""The ``detect`` and ``combine`` stages: their typed results against the files they wrote."""

from __future__ import annotations

from pathlib import Path

import pytest

from sppdet.cache.workdir import WorkDir
from sppdet.detector.core.config import DetectConfig, SvmConfig, as_dict
from sppdet.detector.core.errors import SppdetError
from sppdet.detector.detection.combine import run_combine
from sppdet.detector.detection.stage import DetectResult, run_detect
from sppdet.detector.evaluation.results import read_voc_results
from sppdet.detector.training.inputs import open_split
from sppdet.detector.training.svm import run_train_svm
from tests.detector.training.shared import CLASSES, make_split

SVM = SvmConfig(layer="pool5", norm_sample_windows=500, retrain_every=200)


@pytest.fixture(scope="module")
def detected(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, WorkDir, DetectResult]:
    data, work = make_split(tmp_path_factory.mktemp("detect"))
    run_train_svm(work, open_split(work, data, "trainval", CLASSES), SVM, finetuned=False)
    inputs = open_split(work, data, "test", CLASSES)
    return data, work, run_detect(work, inputs, DetectConfig(), bbox=False)


def test_detect_result_counts_the_written_detections(detected) -> None:  # type: ignore[no-untyped-def]
    _, work, result = detected
    assert result.out == work.detections("test")
    written = read_voc_results(result.out, "test", CLASSES).detections
    assert result.detections == {name: len(written[name]) for name in CLASSES}
    assert sum(result.detections.values()) > 0
    # What the candidates were scored with, the SVMs' settings included (named on a mismatch).
    svm = work.load_model("svm", "sppdet train-svm")["made_from"]
    assert work.recorded("detect", "test") == {
        "detect": as_dict(DetectConfig()),
        "bbox": False,
        "models": {"svm": svm},
    }


def test_combine_needs_two_work_folders(detected) -> None:  # type: ignore[no-untyped-def]
    data, work, _ = detected
    inputs = open_split(work, data, "test", CLASSES)
    with pytest.raises(SppdetError, match="at least two --work folders"):
        run_combine([work], inputs.dataset, DetectConfig(), work.root / "combined")


def test_combining_a_model_with_itself_gives_its_detections(detected, tmp_path) -> None:  # type: ignore[no-untyped-def]
    data, work, result = detected
    dataset = open_split(work, data, "test", CLASSES).dataset
    combined = run_combine([work, work], dataset, DetectConfig(), tmp_path)
    assert combined.out == tmp_path and len(combined.fingerprint) == 16
    # Every candidate twice: NMS suppresses each copy by its twin (IoU 1), the counts stay.
    assert combined.detections == result.detections
