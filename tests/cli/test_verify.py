"""Tests of ``sppdet verify``: every store and model of a work folder checked, what to rerun."""

from __future__ import annotations

from pathlib import Path

import pytest

from sppdet.cache.workdir import WorkDir
from sppdet.cli.app import run_app
from sppdet.cli.main import load_commands
from tests.scenes import tiny_voc_tree

QUICK = ["--preset", "quick-cpu", "--method", "ss-fast", "--max-boxes", "30"]


@pytest.fixture
def work(tmp_path: Path) -> WorkDir:
    load_commands()
    voc = tiny_voc_tree(tmp_path)
    work = WorkDir.at(tmp_path / "work")
    assert run_app(["propose", "--data", str(voc), "--work", str(work.root), *QUICK]) == 0
    work.save_model("svm", {"classes": ["thing"], "fingerprint": "abc"})
    return work


def test_a_sound_work_folder_passes(work: WorkDir, capsys) -> None:
    capsys.readouterr()
    assert run_app(["verify", "--work", str(work.root)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "ok       settings.json",
        "ok       proposals/trainval",
        "ok       models/svm.pt",
    ]


def test_damage_is_listed_with_what_to_rerun(work: WorkDir, capsys) -> None:
    shard = work.proposals("trainval") / "shard-00001.h5"
    shard.write_bytes(shard.read_bytes()[::-1])  # same size, other bytes
    work.model("bbox").write_bytes(b"not a model")
    capsys.readouterr()
    assert run_app(["verify", "--work", str(work.root)]) == 2
    out, err = capsys.readouterr()
    assert (
        "damaged  proposals/trainval: shard 1: its bytes differ from the index's sha256 "
        "(corrupted)" in out.splitlines()
    )
    assert "damaged  models/bbox.pt: not a readable model file (" in out
    assert err == (
        f"sppdet: error: {work.root}: 2 of 4 checked files or stores are damaged or unfinished ; "
        "rerun `sppdet propose --split trainval`, `sppdet train-bbox` with the options they ran "
        "with (a rerun recomputes only what is missing or damaged)\n"
    )


def test_a_missing_work_folder_is_one_line(tmp_path: Path, capsys) -> None:
    load_commands()
    assert run_app(["verify", "--work", str(tmp_path / "none")]) == 2
    assert capsys.readouterr().err == (
        f"sppdet: error: {tmp_path / 'none'}: no work folder here ; pass --work the experiment's "
        "folder\n"
    )
