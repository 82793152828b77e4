"""The preset a work folder runs with: recorded by its first stage (``propose`` or
``cache-features``), the default of every later stage, a different ``--preset`` named setting by
setting with both values."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from sppdet.cache.workdir import WorkDir
from sppdet.cli.app import run_app
from sppdet.cli.main import load_commands
from sppdet.detector.core.config import preset
from sppdet.detector.features.reader import cache_info
from sppdet.proposals.store import open_proposals
from tests.scenes import tiny_voc_tree

load_commands()


def test_propose_records_the_preset_that_later_stages_run_with(tmp_path, caplog) -> None:  # type: ignore[no-untyped-def]
    voc, work = tiny_voc_tree(tmp_path), tmp_path / "work"
    common = ["--data", str(voc), "--work", str(work)]
    assert run_app(["propose", *common, "--preset", "quick-cpu"]) == 0
    assert WorkDir.at(work).recorded_preset()["preset"] == "quick-cpu"
    # cache-features without --preset caches quick-cpu's single scale, not released's five.
    assert run_app(["cache-features", *common]) == 0
    assert cache_info(work, "trainval").scales == list(preset("quick-cpu").features.scales) == [480]
    # An explicit other preset runs as asked, and the warning names each differing setting.
    caplog.set_level(logging.WARNING)
    assert run_app(["propose", *common, "--force", "--preset", "released"]) == 0
    warned = "\n".join(r.getMessage() for r in caplog.records)
    assert "was started with preset quick-cpu; this stage runs with --preset released" in warned
    assert "proposals.max_boxes: 500 (work folder) vs 2000 (--preset released)" in warned
    assert "features.scales: [480] (work folder) vs [480, 576, 688, 874, 1200]" in warned
    with open_proposals(WorkDir.at(work), "trainval") as store:
        assert store.params["max_boxes"] == 2000
    assert WorkDir.at(work).recorded_preset()["preset"] == "quick-cpu"  # the record stays


def test_a_failing_first_stage_records_no_preset(tmp_path: Path) -> None:
    work = tmp_path / "work"
    missing = ["propose", "--data", str(tmp_path / "absent"), "--work", str(work)]
    assert run_app([*missing, "--preset", "quick-cpu"]) == 2
    assert WorkDir.at(work).recorded_preset() is None


@pytest.mark.parametrize("command", ["propose", "cache-features"])
def test_the_first_stages_take_the_work_folders_preset(command: str) -> None:
    from typer.main import get_command

    from sppdet.cli.app import app

    params = {p.name: p for p in get_command(app).commands[command].params}  # type: ignore[attr-defined]
    assert params["preset_name"].default is None  # no fixed default: the folder's record wins
