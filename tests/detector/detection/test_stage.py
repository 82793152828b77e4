"""The ``detect`` and ``combine`` stages: their typed results against the files they wrote."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sppdet.cache.shards import ShardedStore
from sppdet.cache.workdir import WorkDir
from sppdet.detector.core.config import DetectConfig, SvmConfig, as_dict
from sppdet.detector.core.errors import SppdetError
from sppdet.detector.data.datasets import load_dataset
from sppdet.detector.detection.combine import run_combine
from sppdet.detector.detection.postprocess import Candidates
from sppdet.detector.detection.stage import (
    CANDIDATE_FIELDS,
    CANDIDATES_KIND,
    DetectResult,
    finish,
    run_detect,
)
from sppdet.detector.evaluation.results import evaluate_voc_folder, read_voc_results
from sppdet.detector.training.inputs import open_split
from sppdet.detector.training.svm import run_train_svm
from tests.detector.training.shared import CLASSES, make_split
from tests.scenes import draw_scene, make_voc

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
        # What `evaluate --work` needs to find the dataset and the results again.
        "data": None,
        "split": "test",
        "classes": list(CLASSES),
        "out": "detections/test",
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


def test_a_changed_detect_setting_refuses_the_old_candidates(detected) -> None:  # type: ignore[no-untyped-def]
    data, work, _ = detected
    inputs = open_split(work, data, "test", CLASSES)
    with pytest.raises(SppdetError, match="max_per_split_factor"):
        run_detect(work, inputs, DetectConfig(max_per_split_factor=1), bbox=False)


# The pair (SPEC.md, Testing): two windows with IoU 0.25 that NMS on the windows keeps,
# both regressed onto the one object (the regressed boxes' IoU is 9900 / 10100 = 0.98).
OBJECT = (100, 100, 199, 199)
PAIR = [
    Candidates(
        np.array([[80, 100, 179, 199]], np.float32),
        np.array([OBJECT], np.float32),
        np.array([1.0], np.float32),
        np.zeros(1, np.int64),
    ),
    Candidates(
        np.array([[140, 100, 239, 199]], np.float32),
        np.array([[101, 100, 200, 199]], np.float32),
        np.array([0.5], np.float32),
        np.zeros(1, np.int64),
    ),
]


def _candidates_store(root: Path, image_id: str, candidates: Candidates) -> ShardedStore:
    store = ShardedStore.create(root, CANDIDATES_KIND, {"made": "by hand"}, [image_id], 1)

    def fill(writer, image_ids) -> None:  # type: ignore[no-untyped-def]
        for name in CANDIDATE_FIELDS:
            writer.put(image_ids[0], name, getattr(candidates, name))

    store.write_shard(0, fill)
    return store


@pytest.mark.parametrize("models", [1, 2], ids=["one-model", "combination"])
def test_the_pair_is_written_once_and_scores_no_false_positive(tmp_path, models) -> None:  # type: ignore[no-untyped-def]
    data = make_voc(tmp_path / "voc", {"a": (draw_scene(300, 320, [OBJECT], 0), [OBJECT])}, "test")
    dataset = load_dataset(data, "test", ("thing",))
    if models == 1:  # one model scored both windows
        stores = [_candidates_store(tmp_path / "c", "a", Candidates.concatenate(PAIR))]
    else:  # each of two models scored one of them: NMS over the union keeps both windows
        stores = [_candidates_store(tmp_path / f"c{i}", "a", c) for i, c in enumerate(PAIR)]
    out = tmp_path / "results"
    detections = finish(stores, dataset, DetectConfig(), out)
    for store in stores:
        store.close()
    results = read_voc_results(out, "test", ["thing"])
    assert len(results.files["thing"].read_text().splitlines()) == 1
    (box,) = results.detections["thing"].boxes  # read back 0-based
    assert box.tolist() == list(OBJECT) and results.detections["thing"].scores.tolist() == [1.0]
    assert len(detections["thing"]) == 1
    (result,) = evaluate_voc_folder(data, "test", out, ["thing"]).results
    assert (result.true_positives, result.false_positives) == (1, 0)
    # 11-point AP: the mean of eleven precisions of 1.0, within the rounding of their sum
    assert result.ap == pytest.approx(1.0, abs=11 * np.finfo(np.float64).eps)
