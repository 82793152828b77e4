"""``sppdet detect``'s output: stdout holds results only (JSON lines with --jsonl, for image files
and for a split), progress and notes go to stderr, and bad --image paths fail before any work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sppdet.cli.app import run_app
from sppdet.cli.main import load_commands

load_commands()
CLI = [sys.executable, "-c", "from sppdet.cli.main import main; main()"]


def _results_by_hand(folder: Path, split: str) -> dict[str, list[dict[str, Any]]]:
    """Image id -> detections, best first, read from the VOC results files with plain Python:
    lines '<image_id> <score> <x1> <y1> <x2> <y2>', 1-based boxes."""
    found: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(folder.glob(f"*_det_{split}_*.txt")):
        name = path.stem.split(f"_det_{split}_", 1)[1]
        for line in path.read_text().splitlines():
            image_id, score, *box = line.split()
            found.setdefault(image_id, []).append(
                {"class": name, "score": float(score), "box": [float(v) - 1 for v in box]}
            )
    return {k: sorted(v, key=lambda d: -d["score"]) for k, v in found.items()}


def test_split_jsonl_is_one_object_per_image_and_nothing_else(trained, capfd) -> None:  # type: ignore[no-untyped-def]
    data, work = trained
    args = ["detect", "--data", str(data), "--work", str(work.root), "--split", "test"]
    assert run_app([*args, "--jsonl"]) == 0
    out, err = capfd.readouterr()
    lines = [json.loads(line) for line in out.splitlines()]  # every stdout line is JSON
    test_ids = (data / "ImageSets" / "Main" / "test.txt").read_text().split()
    assert [line["image_id"] for line in lines] == test_ids
    assert [Path(line["image"]).stem for line in lines] == test_ids
    expected = _results_by_hand(work.detections("test"), "test")
    assert sum(len(v) for v in expected.values()) > 0
    for line in lines:
        assert line["detections"] == expected.get(line["image_id"], [])
    assert "detections per class: " in err and "detect test" in err  # the report, the bar
    # Without --jsonl, the report is the result, on stdout, as before.
    assert run_app(args) == 0
    out, err = capfd.readouterr()
    assert out.startswith("detections per class: ") and "{" not in out


def test_image_jsonl_from_files_folders_globs_and_lists(trained, tmp_path) -> None:  # type: ignore[no-untyped-def]
    data, work = trained
    images = data / "JPEGImages"
    listed = tmp_path / "list.txt"
    listed.write_text(f"# two more\n{images / '000004.jpg'}\n{images / '000003.jpg'}\n")
    named = [str(images / "000002.jpg"), str(images / "00001[0-1].jpg")]
    ran = subprocess.run(
        [*CLI, "detect", "--work", str(work.root), "--image", *named, "--images-from", listed],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
        check=False,
        timeout=600,
    )
    assert ran.returncode == 0, ran.stderr
    lines = [json.loads(line) for line in ran.stdout.splitlines()]  # stdout: JSON lines only
    names = ["000002", "000010", "000011", "000004", "000003"]  # named first, then listed
    assert [Path(line["image"]).stem for line in lines] == names
    total = sum(len(line["detections"]) for line in lines)
    without = sum(not line["detections"] for line in lines)
    assert total > 0
    summary = f"detect: 5 images, {total} detections ({without} images without any) in "
    assert summary in ran.stderr and "5/5" in ran.stderr  # the summary and the progress bar


@pytest.mark.parametrize(
    ("image", "message"),
    [
        ("absent.jpg", "absent.jpg: no such file or folder ; check the path"),
        ("*.gif", "*.gif: matches nothing ; check the pattern"),
    ],
)
def test_bad_image_paths_fail_before_any_work(tmp_path, monkeypatch, capfd, image, message) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    no_work = tmp_path / "not-a-work-folder"  # reading it would be the first work
    assert run_app(["detect", "--work", str(no_work), "--image", image]) == 2
    out, err = capfd.readouterr()
    assert out == "" and err.startswith(f"sppdet: error: {message}") and err.count("\n") == 1
    assert not no_work.exists()
