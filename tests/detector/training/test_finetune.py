"""``run_finetune``: its typed result, the saved model it describes, the skip on a rerun, and
the released code's fine-tuning data (every image, flips) as the presets' default."""

from __future__ import annotations

import dataclasses

import pytest

from sppdet.cache.fingerprint import fingerprint
from sppdet.detector.core.config import PRESETS, FinetuneConfig, preset
from sppdet.detector.core.errors import SppdetError
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


def test_presets_fine_tune_on_every_image_and_on_flips() -> None:
    for name in PRESETS:  # released code: flip_finetune = true, batches from all of trainval
        cfg = preset(name)
        assert cfg.features.flip, name
        assert cfg.finetune.holdout == 0, name


def test_the_holdout_is_part_of_the_models_fingerprint(split) -> None:  # type: ignore[no-untyped-def]
    data, work = split
    held = dataclasses.replace(CFG, holdout=0.2)
    result = run_finetune(work, open_split(work, data, "trainval", CLASSES), held)
    assert isinstance(result, FinetuneResult)  # trained anew, not "up to date"
    saved = work.load_model("finetune", "sppdet finetune")
    assert saved["made_from"]["finetune"]["holdout"] == 0.2
    assert saved["fingerprint"] == fingerprint(saved["made_from"])
    # 2 of the 10 training images held out: their loss and accuracy are logged
    assert all("heldout_fg_accuracy" in entry for entry in result.history)


@pytest.mark.parametrize("fraction", [1.0, -0.1])
def test_a_holdout_that_is_not_a_fraction_is_refused(split, fraction: float) -> None:  # type: ignore[no-untyped-def]
    data, work = split
    bad = dataclasses.replace(CFG, holdout=fraction)
    with pytest.raises(SppdetError, match=rf"^--holdout {fraction}: .* \[0, 1\)"):
        run_finetune(work, open_split(work, data, "trainval", CLASSES), bad)
