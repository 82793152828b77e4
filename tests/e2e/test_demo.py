"""`sppdet demo`, the README's main command: it runs every stage and its mAP does not regress."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sppdet.cli.app import run_app
from sppdet.cli.main import load_commands

# Measured 2026-11-21 on the 2-core VM: see BENCHMARKS.md. A drop below this is a regression.
DEMO_MAP_FLOOR = 0.50


@pytest.mark.slow
def test_demo_runs_every_stage_and_keeps_its_map(tmp_path: Path) -> None:
    load_commands()
    assert run_app(["demo", "--out", str(tmp_path / "demo")]) == 0
    report = json.loads((tmp_path / "demo" / "work" / "reports" / "run.json").read_text())
    assert sorted(report["seconds"]) == sorted([
        "propose trainval", "propose test", "cache-features trainval", "cache-features test",
        "finetune", "train-svm", "train-bbox", "detect", "evaluate",
    ])  # fmt: skip
    assert report["map"] >= DEMO_MAP_FLOOR
    assert len(list((tmp_path / "demo" / "drawings").glob("*.jpg"))) == 6  # the input's format
