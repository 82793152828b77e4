"""One warning line whenever features come from a trunk with random weights (the default
``--weights random``), and ``run`` repeats it at the end, where it is not scrolled away."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console

from sppdet.cache.workdir import WorkDir
from sppdet.cli.app import logging_to_stderr, run_app
from sppdet.cli.main import load_commands
from sppdet.cli.run import _report
from sppdet.detector.features.writer import random_weights_warning
from sppdet.detector.pipeline import run_pipeline
from tests.detector.inference.shared import tiny_config
from tests.scenes import tiny_voc_tree

load_commands()
WARNING = random_weights_warning("cache-features")


def _cache_features(voc: Path, work: Path, *extra: str) -> None:
    args = ["--data", str(voc), "--work", str(work), "--scales", "64", "--device", "cpu"]
    assert run_app(["cache-features", *args, *extra]) == 0


def test_cache_features_on_random_weights_warns_once(tmp_path, capfd) -> None:  # type: ignore[no-untyped-def]
    voc = tiny_voc_tree(tmp_path)
    _cache_features(voc, tmp_path / "work")
    out, err = capfd.readouterr()
    assert [line for line in err.splitlines() if "random weights" in line] == [
        f"warning: {WARNING}"
    ]
    assert "random weights" not in out


def test_cache_features_with_a_weights_file_does_not_warn(tmp_path, capfd) -> None:  # type: ignore[no-untyped-def]
    from sppdet.detector.backbones.checkpoint import save_backbone_checkpoint
    from sppdet.detector.backbones.weights import load_backbone

    trunk = load_backbone("zf5")
    weights = save_backbone_checkpoint(tmp_path / "zf5.pt", "zf5", trunk.trunk, trunk.preprocessing)
    _cache_features(tiny_voc_tree(tmp_path), tmp_path / "work", "--weights", str(weights))
    assert "random weights" not in capfd.readouterr().err


def test_run_repeats_the_warning_in_its_final_report(trained, capsys) -> None:  # type: ignore[no-untyped-def]
    data, work = trained
    # Every stage is done: the pipeline skips or resumes each, and reports again.
    report = run_pipeline(data, WorkDir.at(work.root), tiny_config(), say=lambda _: None)
    assert report.warnings == [WARNING]
    assert json.loads(work.report("run.json").read_text())["warnings"] == [WARNING]
    capsys.readouterr()
    with logging_to_stderr():
        _report(report, Console())
    out, err = capsys.readouterr()
    assert "mAP" in out and err == f"warning: {WARNING}\n"
