"""Tests of ``sppdet.detector.training.runtime``: the long-stage warning and the precision drift."""

from __future__ import annotations

import logging

import pytest
import torch

from sppdet.detector.core.config import FinetuneConfig
from sppdet.detector.training import runtime as runtime_module
from sppdet.detector.training.finetune import run_finetune
from sppdet.detector.training.inputs import open_split
from sppdet.detector.training.runtime import EtaCheck, PrecisionDrift, Runtime, format_duration
from tests.detector.training.shared import CLASSES

LOGGER = "sppdet.detector.training.runtime"


def test_a_stage_over_an_hour_says_so_once_with_the_preset_and_the_way_out(caplog) -> None:  # type: ignore[no-untyped-def]
    eta = EtaCheck("finetune", 200_000, "batch", Runtime(preset="released"), "--iterations N")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        eta.estimate(200_000 / 0.4)  # the 0.40 batch/s
        eta.estimate(10.0)  # a second estimate changes nothing
    [record] = caplog.records
    line = record.getMessage()
    assert line.startswith("finetune: about 138 h 53 min on cpu with preset released")
    assert "200000 batch at 0.4 batch/s" in line
    assert "--preset quick-cpu" in line and "--iterations N" in line and "--device cuda" in line
    assert eta.seconds == pytest.approx(500_000)


def test_a_short_stage_is_quiet_and_the_estimate_comes_from_the_warm_up(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    now = [100.0]
    monkeypatch.setattr(runtime_module.time, "perf_counter", lambda: now[0])
    eta = EtaCheck("detect", 1_000, "img", Runtime(), "a smaller --split")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for _ in range(runtime_module.ETA_WARMUP_ITEMS):
            now[0] += 1.0  # one second per image
            eta.advance()
    # 3 images in 3 s: 997 more at 1 s each, plus the 3 s already spent.
    assert eta.seconds == pytest.approx(1_000.0)
    assert not caplog.records

    slow = EtaCheck("detect", 10_000, "img", Runtime(), "a smaller --split")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for _ in range(runtime_module.ETA_WARMUP_ITEMS):
            now[0] += 1.0
            slow.advance()
    assert slow.seconds == pytest.approx(10_000.0)
    assert "detect: about 2 h 47 min" in caplog.records[0].getMessage()


def test_finetune_times_its_first_round_and_warns(split, monkeypatch, caplog) -> None:  # type: ignore[no-untyped-def]
    data, work = split
    monkeypatch.setattr(runtime_module, "LONG_STAGE_SECONDS", 0.0)  # any estimate is "long"
    cfg = FinetuneConfig(iterations=8, batch_size=8, fc_dim=16, images_per_round=2, seed=3)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        run_finetune(work, open_split(work, data, "trainval", CLASSES), cfg, force=True)
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("finetune")]
    assert f"timed on the first {runtime_module.ETA_WARMUP_ITEMS})" in line
    assert "with preset released" in line


def test_precision_drift_against_hand_computed_values() -> None:
    reference = torch.tensor([[1.0, 2.0], [3.0, 0.0]])
    mixed = torch.tensor([[1.5, 2.0], [2.0, 2.5]])
    drift = PrecisionDrift.measure(reference, mixed)
    assert drift.max_abs == pytest.approx(2.5)
    assert drift.mean_abs == pytest.approx((0.5 + 0 + 1.0 + 2.5) / 4)
    assert drift.reference_std == pytest.approx(float(torch.tensor([1.0, 2, 3, 0]).std()))
    assert drift.same_argmax == pytest.approx(0.5)  # row 2's best class moved from 0 to 1
    assert "bf16 against fp32: scores move by at most 2.5" in drift.describe("bf16", "scores")


def test_durations_and_runtime_from_the_command_line() -> None:
    assert format_duration(59 * 60) == "59 min"
    assert format_duration(3600 + 5 * 60) == "1 h 05 min"
    made = Runtime.create("cpu", "bf16", "paper")
    assert (made.device.type, made.precision, made.preset) == ("cpu", "bf16", "paper")
    assert Runtime.create().precision == "fp32"
