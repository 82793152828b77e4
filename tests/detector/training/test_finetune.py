"""``run_finetune``: its typed result, the saved model it describes, and the skip on a rerun."""

from __future__ import annotations

import pytest

from sppdet.detector.core.config import FinetuneConfig
from sppdet.detector.training.finetune import FinetuneResult, run_finetune
from sppdet.detector.training.inputs import UpToDate, open_split
from tests.detector.training.shared import CLASSES, mean_norm, proposal_pool5

CFG = FinetuneConfig(
    iterations=6, lr_steps=(4,), batch_size=16, fc_dim=32, checkpoint_every=3, log_every=3,
    images_per_round=2,
)  # fmt: skip


def test_result_describes_the_saved_model_and_a_rerun_skips(split) -> None:  # type: ignore[no-untyped-def]
    data, work = split
    inputs = open_split(work, data, "trainval", CLASSES)
    result = run_finetune(work, inputs, CFG)
    assert isinstance(result, FinetuneResult)
    saved = work.load_model("finetune", "sppdet finetune")
    assert result.model == work.model("finetune") and result.model.is_file()
    assert result.iterations == CFG.iterations
    assert [entry["iteration"] for entry in result.history] == [3, 6]
    assert result.history == saved["history"] and result.origin == saved["origin"]
    # zf5 brings no fc6/fc7: random ones, fc6's input scaled to mean norm 20 over the sampled
    # windows, which on 10 small images are all the proposals.
    scale = float(saved["head"]["input_scale"])
    assert scale == pytest.approx(20.0 / mean_norm(proposal_pool5(inputs)), rel=1e-5)
    assert result.origin == (
        "fc6/fc7: randomly initialised (the backbone has no usable fc6/fc7); "
        f"fc6 input scaled by {scale:.4g} to mean norm 20.0"
    )
    assert not work.model("finetune-partial").exists()
    again = run_finetune(work, open_split(work, data, "trainval", CLASSES), CFG)
    assert again == UpToDate(work.model("finetune"))
