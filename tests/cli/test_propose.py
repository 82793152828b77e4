"""`sppdet propose` and `sppdet propose-recall` from the command line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.io

from sppdet.cache.atomic import read_json
from sppdet.cache.workdir import WorkDir
from sppdet.cli.app import run_app
from sppdet.cli.main import load_commands
from sppdet.detector.core.config import preset
from sppdet.detector.data.datasets import load_dataset
from sppdet.proposals.stage import run_proposals
from sppdet.proposals.store import open_proposals
from tests.scenes import file_digests, make_voc, scenes, tiny_voc_tree


@pytest.fixture
def tiny_voc(tmp_path: Path) -> Path:
    return tiny_voc_tree(tmp_path)


load_commands()


def _propose(voc: Path, work: Path, *extra: str) -> int:
    return run_app(["propose", "--data", str(voc), "--work", str(work), *extra])


def test_propose_then_recall(
    tiny_voc: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    work = tmp_path / "w"
    assert _propose(tiny_voc, work, "--method", "edgeboxes", "--max-boxes", "50") == 0
    out = capsys.readouterr().out
    assert "edgeboxes: 5 images (5 computed, 0 already done)" in " ".join(out.split())
    with open_proposals(WorkDir.at(work), "trainval") as store:
        assert store.params["method"] == "edgeboxes" and store.params["max_boxes"] == 50
    report_path = tmp_path / "r.json"
    assert (
        run_app(
            [
                "propose-recall",
                "--data",
                str(tiny_voc),
                "--work",
                str(work),
                "--json",
                str(report_path),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "recall@0.5" in out and "seconds/image" in out
    report = read_json(report_path)
    assert report["method"] == "edgeboxes" and report["gt_boxes"] == 7
    assert report["recall"]["0.5"] == 1.0 and report["seconds_per_image"] > 0
    assert read_json(work / "reports" / "recall.json")["trainval"] == report


def test_user_errors_are_one_line(
    tiny_voc: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    work = tmp_path / "w"
    cases = [
        (
            ["--method", "edgeboxes", "--edge-model", str(tmp_path / "nope.yml.gz")],
            "edge model not found",
        ),
        (
            ["--method", "slow-search"],
            "unknown proposal method 'slow-search': choose one of ss-fast, ss-quality, edgeboxes, "
            "ss+eb",
        ),
        (
            ["--method", "ss-fast", "--edge-model", str(tmp_path / "nope.yml.gz")],
            "--edge-model is used by --method edgeboxes or ss+eb, not 'ss-fast'",
        ),
        (["--import", str(tmp_path / "none.mat"), "--method", "ss-fast"], "drop --method"),
    ]
    for extra, message in cases:
        assert _propose(tiny_voc, work, *extra) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("sppdet: error: ") and message in err[0]
    assert run_app(["propose-recall", "--data", str(tiny_voc), "--work", str(work)]) == 2
    assert "run `sppdet propose` first" in capsys.readouterr().err


def test_bad_images_fail_unless_skipped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    voc = make_voc(tmp_path / "voc", scenes(3), "trainval")
    (voc / "JPEGImages" / "img01.png").write_bytes(b"")
    work = tmp_path / "w"
    assert _propose(voc, work, "--method", "edgeboxes") == 2
    captured = capsys.readouterr()
    assert "--skip-bad" in captured.err and "img01.png" in captured.err
    assert _propose(voc, work, "--method", "edgeboxes", "--skip-bad") == 0
    assert "unreadable: " in capsys.readouterr().out


def test_import_from_the_command_line(tiny_voc: Path, tmp_path: Path) -> None:
    ids = [f"img{i:02d}" for i in range(5)]
    images = np.empty((1, 5), object)
    boxes = np.empty((1, 5), object)
    for i, image_id in enumerate(ids):
        images[0, i] = image_id
        boxes[0, i] = np.array([[1, 1, 100, 120], [11, 21, 60, 80]], np.float64)
    mat = tmp_path / "ss.mat"
    scipy.io.savemat(mat, {"images": images, "boxes": boxes})
    work = tmp_path / "w"
    assert _propose(tiny_voc, work, "--import", str(mat)) == 0
    with open_proposals(WorkDir.at(work), "trainval") as store:
        np.testing.assert_array_equal(store.boxes("img03"), [[0, 0, 119, 99], [20, 10, 79, 59]])


@pytest.mark.slow  # three CLI start-ups and two worker pools: ~20 s on two busy cores
def test_ctrl_c_then_rerun_gives_the_uninterrupted_bytes(tmp_path: Path) -> None:
    voc = make_voc(tmp_path / "voc", scenes(16, 240, 320), "trainval")  # 4 shards of 4
    work = tmp_path / "w"
    command = [sys.executable, "-c", "from sppdet.cli.main import main; main()", "propose",
               "--data", str(voc), "--work", str(work), "--workers", "2"]  # fmt: skip
    env = {**os.environ, "COLUMNS": "200"}
    # A shell without job control starts background jobs with SIGINT ignored, which a child
    # inherits (and Python then installs no KeyboardInterrupt handler): restore the default so
    # the interrupt below reaches the command however the test run was launched.
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    root = work / "proposals" / "trainval"
    deadline = time.monotonic() + 120
    while not list(root.glob("shard-*.h5")) and time.monotonic() < deadline:
        time.sleep(0.05)
        assert process.poll() is None, process.communicate()
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err.decode()
    done = sorted(p.name for p in root.glob("shard-*.h5"))
    assert 1 <= len(done) < 4  # stopped part-way: complete shards and at most temporaries
    assert subprocess.run(command, capture_output=True, env=env).returncode == 0
    clean = tmp_path / "clean"
    run_proposals(
        load_dataset(voc, "trainval"), WorkDir.at(clean), preset("released").proposals,
        progress=False,
    )  # fmt: skip
    assert file_digests(root) == file_digests(clean / "proposals" / "trainval")


def test_coco_json_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "coco"
    folder.mkdir()
    images, annotations = [], []
    for i, (image_id, (rgb, boxes)) in enumerate(scenes(3).items()):
        cv2.imwrite(str(folder / f"{image_id}.png"), rgb[:, :, ::-1])
        images.append({"id": i + 1, "file_name": f"{image_id}.png", "width": 160, "height": 120})
        for x1, y1, x2, y2 in boxes:
            annotations.append(
                {"id": len(annotations) + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0,
                 "bbox": [x1, y1, x2 - x1 + 1, y2 - y1 + 1], "area": (x2 - x1 + 1) * (y2 - y1 + 1)}
            )  # fmt: skip
    data = folder / "val.json"
    categories = [{"id": 1, "name": "thing"}]
    data.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    work = tmp_path / "w"
    assert _propose(data, work, "--method", "ss-fast", "--split", "val") == 0
    recall = ["propose-recall", "--data", str(data), "--work", str(work), "--split", "val"]
    assert run_app(recall) == 0
    report = read_json(work / "reports" / "recall.json")["val"]  # a COCO file's split is its name
    assert report["images"] == 3 and report["gt_boxes"] == 4 and report["recall"]["0.7"] == 1.0
    # The JSON elsewhere than its images: --images names their folder, and without it the
    # missing images are refused before any work (no store is started).
    elsewhere = tmp_path / "annotations" / "val.json"
    elsewhere.parent.mkdir()
    elsewhere.write_text(data.read_text())
    capsys.readouterr()
    assert _propose(elsewhere, tmp_path / "w2", "--split", "val", "--max-boxes", "50") == 2
    assert "missing" in capsys.readouterr().err
    assert not (tmp_path / "w2" / "proposals" / "val").exists()
    extra = ("--split", "val", "--images", str(folder), "--max-boxes", "50")
    assert _propose(elsewhere, tmp_path / "w2", *extra) == 0
