"""``run_train_svm``: its typed result, the saved model it describes, and the skip on a rerun."""

from __future__ import annotations

import pytest

from sppdet.detector.core.config import SvmConfig
from sppdet.detector.training.inputs import UpToDate, open_split
from sppdet.detector.training.svm import SvmResult, run_train_svm
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
