"""``run_train_svm``: its typed result, the saved model it describes, the skip on a rerun, and
the calibration: fitted on held-out images only, added to older models without retraining."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import sppdet.detector.training.svm as svm_stage
from sppdet.detector.core.config import SvmConfig
from sppdet.detector.data.records import ImageRecord
from sppdet.detector.detection.postprocess import Candidates
from sppdet.detector.heads.calibration import CALIBRATION_KEY
from sppdet.detector.training.inputs import UpToDate, open_split
from sppdet.detector.training.svm import (
    SvmResult,
    detection_outcomes,
    held_out_images,
    run_train_svm,
)
from tests.detector.training.shared import CLASSES, mean_norm, proposal_pool5

# pool5 needs no fine-tuned head; 10,000 sampled windows are more than the split has: all of them.
CFG = SvmConfig(layer="pool5", norm_sample_windows=10_000, retrain_every=200)


def test_result_describes_the_saved_model_and_a_rerun_skips(split) -> None:  # type: ignore[no-untyped-def]
    data, work = split
    inputs = open_split(work, data, "trainval", CLASSES)
    result = run_train_svm(work, inputs, CFG, finetuned=False)
    assert isinstance(result, SvmResult)
    saved = work.load_model("svm", "sppdet train-svm")
    assert result.model == work.model("svm") and result.model.is_file()
    assert result.scale == saved["scale"]
    assert result.scale == pytest.approx(20.0 / mean_norm(proposal_pool5(inputs)), rel=1e-5)
    assert list(result.stats) == list(CLASSES)
    assert list(result.stats.values()) == saved["stats"]
    for stats in result.stats.values():
        assert stats["retrains"] >= 1 and stats["cached_negatives"] > 0
    again = run_train_svm(work, open_split(work, data, "trainval", CLASSES), CFG, finetuned=False)
    assert again == UpToDate(work.model("svm"))


# Another fingerprint than CFG's, so the first run below trains whatever ran before it.
CALIBRATED = SvmConfig(layer="pool5", norm_sample_windows=10_000, retrain_every=150)


def test_svms_without_a_calibration_get_one_and_stay_as_trained(split) -> None:  # type: ignore[no-untyped-def]
    data, work = split
    inputs = open_split(work, data, "trainval", CLASSES)
    trained = run_train_svm(work, inputs, CALIBRATED, finetuned=False, force=True)
    assert isinstance(trained, SvmResult) and trained.retrained
    model = work.load_model("svm", "sppdet train-svm")
    stored = model[CALIBRATION_KEY]
    assert len(stored["a"]) == len(stored["b"]) == len(CLASSES)
    assert stored["held_out_images"] == 2  # 10 training images: the 5th and the 10th
    assert all(0 <= c <= d for c, d in zip(stored["correct"], stored["detections"], strict=True))
    np.testing.assert_array_equal(trained.calibration.a, stored["a"])
    # A model saved before calibration existed: train-svm calibrates it, the SVMs untouched.
    del model[CALIBRATION_KEY]
    work.save_model("svm", model)
    again = run_train_svm(work, open_split(work, data, "trainval", CLASSES), CALIBRATED, False)
    assert isinstance(again, SvmResult) and not again.retrained
    upgraded = work.load_model("svm", "sppdet train-svm")
    assert torch.equal(upgraded["weights"], model["weights"])
    assert torch.equal(upgraded["bias"], model["bias"])
    assert upgraded["fingerprint"] == model["fingerprint"]
    assert upgraded[CALIBRATION_KEY] == stored  # the same held-out SVMs: the same fit
    assert run_train_svm(work, inputs, CALIBRATED, False) == UpToDate(work.model("svm"))


def test_held_out_images_never_reach_the_calibration_svms(split, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    data, work = split
    inputs = open_split(work, data, "trainval", CLASSES)
    records = inputs.dataset.records
    held = {records[i].image_id for i in held_out_images(len(records))}
    seen: list[list[str]] = []
    positives: list[list[int]] = []
    real_candidates, real_train = svm_stage._negative_candidates, svm_stage.train_svms

    def candidates(inputs, feats, scale, cfg, runtime, chosen):  # type: ignore[no-untyped-def]
        seen.append([r.image_id for r in chosen])
        return real_candidates(inputs, feats, scale, cfg, runtime, chosen)

    def train(pos, images, cfg, *args, **kwargs):  # type: ignore[no-untyped-def]
        positives.append([len(p) for p in pos])
        return real_train(pos, images, cfg, *args, **kwargs)

    monkeypatch.setattr(svm_stage, "_negative_candidates", candidates)
    monkeypatch.setattr(svm_stage, "train_svms", train)
    run_train_svm(work, inputs, CALIBRATED, finetuned=False, force=True)
    assert seen[0] == [r.image_id for r in records]  # the detection SVMs: every image
    assert seen[1] == [r.image_id for r in records if r.image_id not in held]
    # Every class has boxes outside the held-out images here; their count, from the records:
    kept = [r for r in records if r.image_id not in held]
    assert positives[1] == [sum(int((r.labels == k).sum()) for r in kept) for k in range(3)]
    assert positives[0] == [sum(int((r.labels == k).sum()) for r in records) for k in range(3)]


def test_held_out_images_are_every_fifth_or_the_last() -> None:
    np.testing.assert_array_equal(held_out_images(10), [4, 9])
    np.testing.assert_array_equal(held_out_images(12), [4, 9])
    np.testing.assert_array_equal(held_out_images(3), [2])
    assert len(held_out_images(1)) == 0


def test_held_out_detections_are_judged_as_the_devkit_judges_them() -> None:
    record = ImageRecord(
        "a",
        Path("a.jpg"),
        100,
        100,
        boxes=np.array([[10, 10, 49, 49], [60, 60, 89, 89], [0, 60, 29, 89]], np.float32),
        labels=np.array([0, 0, 1]),
        difficult=np.array([False, True, False]),
    )
    windows = np.array(
        [
            [10, 10, 49, 49],  # box 0 exactly: correct
            [12, 12, 49, 49],  # box 0 again (IoU 0.9): taken by the better one, wrong
            [60, 60, 89, 89],  # the difficult box: left out, as the evaluation leaves it out
            [0, 0, 9, 9],  # nothing: wrong
            [0, 60, 29, 89],  # class 1's box, but detected as class 0: wrong for class 0
        ],
        np.float32,
    )
    kept = Candidates(
        windows, windows, np.array([0.5, 0.9, 0.1, -0.5, 0.2], np.float32), np.zeros(5, np.int64)
    )
    margins, correct = detection_outcomes(record, kept, 0)
    # best first: 0.9 (box 0, first to match: correct), 0.5 (box 0 taken: wrong), 0.2, -0.5
    np.testing.assert_array_equal(margins, np.array([0.9, 0.5, 0.2, -0.5], np.float32))
    np.testing.assert_array_equal(correct, [True, False, False, False])
    assert len(detection_outcomes(record, kept, 1)[0]) == 0  # no detection of class 1
