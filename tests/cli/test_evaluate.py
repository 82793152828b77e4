"""``sppdet synth`` and ``sppdet evaluate`` through the CLI: the README demo and bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sppdet.cache.workdir import WorkDir
from sppdet.cli.app import run_app
from sppdet.cli.main import load_commands
from sppdet.detector.evaluation.coco import evaluate_coco
from sppdet.detector.evaluation.results import evaluate_voc_folder

load_commands()

CLASSES = ("circle", "square", "triangle")  # the trained fixture's


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli") / "demo"
    assert run_app(["synth", "--out", str(root), "--num-images", "30", "--with-detections"]) == 0
    return root


def evaluate_args(demo: Path, *extra: str) -> list[str]:
    return ["evaluate", "--data", str(demo), "--split", "test", *extra]


def test_synth_prints_what_it_wrote(tmp_path, capsys):
    assert run_app(["synth", "--out", str(tmp_path / "d"), "--num-images", "6", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "test 3" in out and "objects" in out
    assert not (tmp_path / "d" / "results").exists()


def test_readme_demo_voc2007_json(demo, tmp_path, capsys):
    out_json = tmp_path / "eval.json"
    args = evaluate_args(demo, "--voc2007", "--detections", str(demo / "results"))
    assert run_app([*args, "--report", str(out_json)]) == 0
    printed = capsys.readouterr().out
    report = json.loads(out_json.read_text())
    direct = evaluate_voc_folder(demo, "test", demo / "results")
    assert report["metric"] == "voc2007"
    assert report["ap"] == {r.name: r.ap for r in direct.results}
    assert report["map"] == direct.map
    assert report["npos"] == {r.name: r.npos for r in direct.results}
    assert 0 < report["map"] < 1
    for name in ("circle", "square", "triangle"):
        assert name in printed
    assert f"mAP (voc2007): {100 * direct.map:.2f}" in printed


def test_voc2010_metric(demo, tmp_path):
    out_json = tmp_path / "eval.json"
    args = evaluate_args(demo, "--voc2010", "--detections", str(demo / "results"))
    assert run_app([*args, "--report", str(out_json)]) == 0
    report = json.loads(out_json.read_text())
    direct = evaluate_voc_folder(demo, "test", demo / "results", metric="voc2010")
    assert report["metric"] == "voc2010" and report["map"] == direct.map


def test_detections_alone_default_to_voc2007(demo, tmp_path):
    out_json = tmp_path / "eval.json"
    args = evaluate_args(demo, "--detections", str(demo / "results"), "--report", str(out_json))
    assert run_app(args) == 0
    assert json.loads(out_json.read_text())["metric"] == "voc2007"


def test_coco_metric(demo, tmp_path, capsys):
    results = demo / "results" / "coco_results_test.json"
    out_json = tmp_path / "coco.json"
    assert run_app([*evaluate_args(demo, "--coco", str(results)), "--report", str(out_json)]) == 0
    report = json.loads(out_json.read_text())
    direct = evaluate_coco(demo, results, "test")
    assert report["metric"] == "coco"
    assert (report["map"], report["ap50"], report["ap75"]) == tuple(direct.stats[:3])
    assert "AP50" in capsys.readouterr().out


def test_classes_option_restricts_the_table(demo, tmp_path, capsys):
    out_json = tmp_path / "eval.json"
    args = evaluate_args(demo, "--detections", str(demo / "results"), "--classes", "circle,square")
    assert run_app([*args, "--report", str(out_json)]) == 0
    assert sorted(json.loads(out_json.read_text())["ap"]) == ["circle", "square"]
    assert "comp4_det_test_triangle.txt ignored" in capsys.readouterr().err  # a note: stderr


# ----------------------------------------------------------------------------- bad input


def fails(args: list[str], capsys, message: str) -> None:
    assert run_app(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sppdet: error: ") and "\n" not in err, err
    assert message in err, err


def test_error_missing_voc_tree(tmp_path, capsys):
    args = ["evaluate", "--data", str(tmp_path), "--detections", str(tmp_path)]
    fails(args, capsys, "not a PASCAL VOC tree")


def test_error_missing_split(demo, capsys):
    args = ["evaluate", "--data", str(demo), "--split", "nope", "--detections", str(demo)]
    fails(args, capsys, "nope.txt: split file not found")


def bad_results(demo: Path, tmp_path: Path, line: str) -> Path:
    folder = tmp_path / "res"
    folder.mkdir()
    for name in ("circle", "square", "triangle"):
        (folder / f"comp4_det_test_{name}.txt").write_bytes(
            (demo / "results" / f"comp4_det_test_{name}.txt").read_bytes()
        )
    with open(folder / "comp4_det_test_square.txt", "a") as handle:
        handle.write(line + "\n")
    return folder


def test_error_results_line_wrong_field_count(demo, tmp_path, capsys):
    test_id = (demo / "ImageSets" / "Main" / "test.txt").read_text().split()[0]
    folder = bad_results(demo, tmp_path, f"{test_id} 0.5 1 1 5")
    fails(evaluate_args(demo, "--detections", str(folder)), capsys, "expected 6 fields")


def test_error_results_non_numeric_score(demo, tmp_path, capsys):
    test_id = (demo / "ImageSets" / "Main" / "test.txt").read_text().split()[0]
    folder = bad_results(demo, tmp_path, f"{test_id} high 1 1 5 5")
    fails(evaluate_args(demo, "--detections", str(folder)), capsys, "score 'high' is not a number")


def test_error_results_unknown_image_id(demo, tmp_path, capsys):
    folder = bad_results(demo, tmp_path, "999999 0.5 1 1 5 5")
    fails(evaluate_args(demo, "--detections", str(folder)), capsys, "image id '999999' is not in")


def test_error_keeps_an_earlier_json_report(demo, tmp_path, capsys):
    out_json = tmp_path / "eval.json"
    out_json.write_text('{"earlier": true}')
    folder = bad_results(demo, tmp_path, "999999 0.5 1 1 5 5")
    args = [*evaluate_args(demo, "--detections", str(folder)), "--report", str(out_json)]
    fails(args, capsys, "is not in the evaluated split")
    assert json.loads(out_json.read_text()) == {"earlier": True}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--voc2007", "--voc2010", "--detections", "x"], "exclude each other"),
        ([], "nothing to score"),
        (["--coco", "r.json", "--detections", "x"], "--coco scores a COCO results JSON"),
    ],
)
def test_error_conflicting_options(demo, capsys, extra, message):
    fails(evaluate_args(demo, *extra), capsys, message)


def test_console_script_smoke(demo, tmp_path):
    """The installed ``sppdet`` entry point: help, and a real error's exit code."""
    script = shutil.which("sppdet")
    exe = [script] if script else [sys.executable, "-c", "from sppdet.cli.main import main; main()"]
    helped = subprocess.run([*exe, "synth", "--help"], capture_output=True, text=True)
    assert helped.returncode == 0 and "EVALUATOR EXERCISE" in helped.stdout
    failed = subprocess.run(
        [*exe, "evaluate", "--data", str(tmp_path / "none"), "--detections", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert failed.returncode == 2
    assert failed.stderr.strip().startswith("sppdet: error: ") and failed.stdout == ""


# ----------------------------------------------------------------------------- --work, --plot


def test_a_work_folder_finds_its_dataset_and_detections(trained, tmp_path, capsys):
    data, work = trained
    plots = tmp_path / "plots"
    assert run_app(["evaluate", "--work", str(work.root), "--plot", str(plots)]) == 0
    printed = capsys.readouterr()
    direct = evaluate_voc_folder(data, "test", work.detections("test"), CLASSES)
    report = json.loads(work.report("eval.json").read_text())
    assert report["data"] == str(data.absolute()) and report["split"] == "test"
    assert report["map"] == direct.map and report["metric"] == "voc2007"
    for r in direct.results:
        entry = report["classes"][r.name]
        assert entry["precision"] == r.precision.tolist() and entry["recall"] == r.recall.tolist()
        assert (entry["ap"], entry["npos"]) == (r.ap, r.npos)
        assert (entry["true_positives"], entry["false_positives"]) == (
            r.true_positives,
            r.false_positives,
        )
    assert sorted(p.name for p in plots.iterdir()) == [
        f"pr_{r.name}.png" for r in direct.results if r.npos
    ]
    assert f"mAP (voc2007): {100 * direct.map:.2f}" in printed.out  # results: stdout
    assert "eval.json" in printed.err and "eval.json" not in printed.out  # the rest: stderr


def test_a_split_the_work_folder_did_not_detect_on_is_named(trained, capsys):
    _, work = trained
    args = ["evaluate", "--work", str(work.root), "--split", "trainval"]
    fails(args, capsys, "no detections of split 'trainval' recorded (it has detections of 'test')")


def test_a_work_folder_from_before_the_records_asks_for_a_rerun(tmp_path, capsys):
    work = WorkDir.at(tmp_path / "work")
    work.record("detect", "test", {"detect": {}, "bbox": True, "models": {}})
    args = ["evaluate", "--work", str(work.root)]
    fails(args, capsys, "was run by an older sppdet that did not record its dataset")
