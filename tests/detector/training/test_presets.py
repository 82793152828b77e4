"""The work folder's preset (``training.presets``) and mismatches named setting by setting."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pytest

from sppdet.cache.fingerprint import compare_settings
from sppdet.cache.workdir import WorkDir
from sppdet.cli.app import run_app
from sppdet.cli.main import load_commands
from sppdet.detector.core.config import DetectConfig, FinetuneConfig, SvmConfig, as_dict, preset
from sppdet.detector.core.errors import SppdetError
from sppdet.detector.detection.stage import run_detect
from sppdet.detector.training.finetune import _finetune_fingerprint, run_finetune
from sppdet.detector.training.inputs import open_split
from sppdet.detector.training.presets import record_config, stage_config
from sppdet.detector.training.runtime import Runtime
from sppdet.detector.training.svm import run_train_svm
from tests.detector.training.shared import CLASSES

load_commands()


def test_the_first_stage_records_its_preset_and_later_stages_use_it(tmp_path: Path) -> None:
    work = WorkDir.at(tmp_path)
    assert stage_config(work, None) == preset("released")  # nothing recorded: the default
    first = stage_config(work, "quick-cpu")
    assert first == preset("quick-cpu") and work.recorded_preset() is None
    assert record_config(work, first) and not record_config(work, preset("paper"))
    assert work.recorded_preset() == as_dict(preset("quick-cpu"))
    # No --preset: quick-cpu's settings, not the released default.
    later = stage_config(work, None)
    assert later == preset("quick-cpu") and later.finetune.iterations == 2_000
    assert work.recorded_splits("preset") == []  # not a stage:split entry


def test_recorded_settings_win_over_a_newer_version_s_defaults(tmp_path: Path) -> None:
    work = WorkDir.at(tmp_path)
    recorded = as_dict(preset("paper"))
    recorded["finetune"]["iterations"] = 7  # as if this version's paper preset had changed
    work.record_preset(recorded)
    assert stage_config(work, None).finetune.iterations == 7
    recorded["finetune"]["renamed_setting"] = 1
    work.settings_path.unlink()
    work.record_preset(recorded)
    with pytest.raises(SppdetError, match="unknown FinetuneConfig settings renamed_setting"):
        stage_config(work, None)


def test_another_preset_runs_as_asked_and_names_what_differs(tmp_path, caplog) -> None:  # type: ignore[no-untyped-def]
    work = WorkDir.at(tmp_path)
    record_config(work, stage_config(work, "quick-cpu"))
    with caplog.at_level(logging.WARNING, logger="sppdet.detector.training.presets"):
        assert stage_config(work, "released") == preset("released")
    line = caplog.records[0].getMessage()
    assert "was started with preset quick-cpu; this stage runs with --preset released" in line
    assert "finetune.iterations: 2000 (work folder) vs 200000 (--preset released)" in line
    assert work.recorded_preset()["preset"] == "quick-cpu"  # the record stays


def test_differences_name_nested_settings_with_both_values() -> None:
    before = {"svm": {"C": 0.001, "layer": "fc7"}, "scales": [480], "inputs": "a"}
    after = {"svm": {"C": 0.01, "layer": "fc7"}, "scales": (480, 688), "inputs": "a", "new": 1}
    assert compare_settings(before, after, "then", "now") == [
        "new: None (then) vs 1 (now)",
        "scales: [480] (then) vs [480, 688] (now)",
        "svm.C: 0.001 (then) vs 0.01 (now)",
    ]


def test_an_interrupted_finetuning_with_other_settings_names_them(split) -> None:  # type: ignore[no-untyped-def]
    data, work = split
    inputs = open_split(work, data, "trainval", CLASSES)
    cfg = FinetuneConfig(iterations=6, batch_size=8, fc_dim=16, images_per_round=2)
    earlier = dataclasses.replace(cfg, iterations=2_000, base_lr=0.01)
    made = _finetune_fingerprint(inputs, earlier, Runtime())
    work.save_model("finetune-partial", {"fingerprint": "earlier", "made_from": made})
    try:
        with pytest.raises(SppdetError) as error:
            run_finetune(work, inputs, cfg)
    finally:
        work.model("finetune-partial").unlink()
    message = str(error.value)
    assert "finetune.base_lr: 0.01 (checkpoint) vs 0.001 (asked)" in message
    assert "finetune.iterations: 2000 (checkpoint) vs 6 (asked)" in message
    assert "--force to start over" in message and "\n" not in message


def test_stale_candidates_are_refused_naming_the_settings(split) -> None:  # type: ignore[no-untyped-def]
    data, work = split
    train_inputs = open_split(work, data, "trainval", CLASSES)
    svm = SvmConfig(layer="pool5", norm_sample_windows=300, retrain_every=300)
    run_train_svm(work, train_inputs, svm, finetuned=False, force=True)
    out = work.root / "stale-check"
    run_detect(work, open_split(work, data, "test", CLASSES), DetectConfig(), False, out, True)
    # Another detect setting.
    with pytest.raises(
        SppdetError, match=r"detect\.nms_iou: 0\.3 \(candidates\) vs 0\.4 \(asked\)"
    ):
        run_detect(work, open_split(work, data, "test", CLASSES), DetectConfig(nms_iou=0.4), False)
    # SVMs retrained with another C: named through the settings the detect run recorded.
    run_train_svm(work, train_inputs, dataclasses.replace(svm, C=0.01), finetuned=False)
    with pytest.raises(SppdetError) as error:
        run_detect(work, open_split(work, data, "test", CLASSES), DetectConfig(), False)
    assert "svm.svm.C: 0.001 (candidates) vs 0.01 (asked)" in str(error.value)
    assert "rerun with --force" in str(error.value)


def _without_preset(work: WorkDir, root: Path) -> WorkDir:
    """A work folder at ROOT sharing WORK's stores and settings, with no preset recorded (as a
    folder made before presets were recorded)."""
    folder = WorkDir.at(root)
    folder.root.mkdir()
    for sub in ("proposals", "features"):
        (folder.root / sub).symlink_to(work.root / sub, target_is_directory=True)
    settings = work.settings()
    settings.pop("preset", None)
    folder.settings_path.write_text(json.dumps(settings))
    return folder


def test_finetune_without_preset_trains_with_the_recorded_settings(tmp_path, split) -> None:  # type: ignore[no-untyped-def]
    data, work = split
    folder = _without_preset(work, tmp_path / "work")
    cfg = preset("quick-cpu")
    tiny = dataclasses.replace(
        cfg, finetune=dataclasses.replace(cfg.finetune, iterations=4, fc_dim=16, batch_size=8)
    )
    folder.record_preset(as_dict(tiny))
    argv = ["finetune", "--data", str(data), "--work", str(folder.root), "--device", "cpu"]
    assert run_app(argv) == 0
    made = folder.load_model("finetune", "sppdet finetune")["made_from"]["finetune"]
    assert made == as_dict(tiny.finetune)


def test_a_command_records_its_preset_once_its_inputs_are_found(tmp_path, split) -> None:  # type: ignore[no-untyped-def]
    data, work = split
    empty = WorkDir.at(tmp_path / "empty")
    argv = ["train-bbox", "--data", str(data), "--preset", "quick-cpu"]
    assert run_app([*argv, "--work", str(empty.root)]) == 2  # no proposals there
    assert empty.recorded_preset() is None
    folder = _without_preset(work, tmp_path / "work")
    assert run_app([*argv, "--work", str(folder.root)]) == 0
    assert folder.recorded_preset() == as_dict(preset("quick-cpu"))
