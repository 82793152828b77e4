"""A COCO dataset through the CLI: images in their own folder (``--images``, ``{split}`` in it),
splits as separate files, and a missing image refused before any stage runs."""

from __future__ import annotations

from sppdet.cli.app import run_app
from sppdet.cli.main import load_commands
from tests.detector.data.shared import coco_json

load_commands()


def test_run_refuses_missing_images_before_any_stage(tmp_path, capsys):
    annotations = tmp_path / "coco" / "annotations"
    annotations.mkdir(parents=True)
    coco_json(annotations / "instances_train.json")
    coco_json(annotations / "instances_val.json")
    train_images = tmp_path / "coco" / "train"
    train_images.mkdir()
    for name in ("a.jpg", "b.jpg"):
        (train_images / name).write_bytes(b"not decoded before the check")
    work = tmp_path / "work"
    args = [
        "run", "--data", str(annotations / "instances_train.json"), "--work", str(work),
        "--images", str(tmp_path / "coco" / "{split}"), "--train-split", "train",
        "--test-split", "val",
    ]  # fmt: skip
    assert run_app(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    missing = tmp_path / "coco" / "val" / "a.jpg"
    assert err == (
        f"sppdet: error: {missing}: 2 of the 2 images of instances_val.json are missing from "
        f"{missing.parent} ; pass --images DIR, the folder their file_names are relative to"
    )
    assert not (work / "proposals").exists()  # nothing ran


def test_a_split_the_coco_file_does_not_hold_is_refused(tmp_path, capsys):
    data = coco_json(tmp_path / "val.json")
    (tmp_path / "results.json").write_text("[]")
    args = ["evaluate", "--data", str(data), "--coco", str(tmp_path / "results.json")]
    assert run_app(args) == 2  # --split test (the default): not this file's
    err = capsys.readouterr().err
    assert "a COCO file holds one split, 'val'" in err and "pass --split val" in err
    assert run_app([*args, "--split", "val"]) == 0
    assert "mAP@[.5:.95] 0.00" in capsys.readouterr().out  # scored: no detections, AP 0
