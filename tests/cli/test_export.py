"""``sppdet export``: one model file from a work folder, and its one-line refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from sppdet.cache.workdir import WorkDir
from sppdet.cli.app import run_app
from sppdet.cli.main import load_commands
from sppdet.detector import Detector
from sppdet.detector.data.datasets import load_dataset
from sppdet.detector.data.images import read_image
from sppdet.detector.inference.onnx_export import onnx_inputs
from sppdet.proposals.methods import propose
from tests.detector.inference.shared import assert_same
from tests.detector.training.shared import CLASSES, make_pool5_work

load_commands()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, WorkDir]:
    """A split with its stores and pool5 SVMs: the smallest work folder a detector loads from."""
    return make_pool5_work(tmp_path_factory.mktemp("export"))


def test_export_writes_the_file_a_detector_loads(trained, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    data, work = trained
    out = tmp_path / "models" / "model.sppdet"
    capsys.readouterr()
    assert run_app(["export", "--work", str(work.root), "--out", str(out)]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {out} (")
    paths = [r.path for r in load_dataset(data, "test", CLASSES).records[:2]]
    from_file = Detector.load(out, device="cpu").predict(paths, score_threshold=None)
    from_work = Detector.load(work.root, device="cpu").predict(paths, score_threshold=None)
    assert sum(len(d) for d in from_work) > 0
    for found, expected in zip(from_file, from_work, strict=True):
        assert_same(found, expected)
    assert [p.name for p in out.parent.iterdir()] == ["model.sppdet"]  # no temporary left


def test_export_refusals_are_one_line(trained, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    _, work = trained
    cases = [
        (["--work", str(work.root), "--out", str(tmp_path)], f"{tmp_path}: a folder ; name"),
        (
            ["--work", str(tmp_path / "empty"), "--out", str(tmp_path / "m.sppdet")],
            "svm.pt: model not found ; run `sppdet train-svm` first",
        ),
        (
            ["--work", str(work.root), "--format", "tflite", "--out", str(tmp_path / "m.sppdet")],
            "--format 'tflite': choose one of sppdet, onnx",
        ),
        (
            ["--model", str(tmp_path / "m.sppdet"), "--fc-rank", "4,4", "--out", str(tmp_path)],
            "--fc-rank with --model: truncating needs the work folder ; export with --work",
        ),
        (
            ["--model", str(tmp_path / "none.sppdet"), "--out", str(tmp_path / "m.sppdet")],
            "none.sppdet",
        ),
    ]
    for args, message in cases:
        capsys.readouterr()
        assert run_app(["export", *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("sppdet: error: ") and message in err[0]
    assert not (tmp_path / "m.sppdet").exists()


def test_export_onnx_from_a_work_folder_or_a_model_file(trained, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """`--format onnx` writes the same model from --work as from --model: onnxruntime gives the
    same bits from both, for windows of a test image (the numbers themselves are checked in
    tests/detector/inference/test_onnx_export.py)."""
    data, work = trained
    model_file = tmp_path / "model.sppdet"
    assert run_app(["export", "--work", str(work.root), "--out", str(model_file)]) == 0
    detector = Detector.load(model_file, device="cpu")
    rgb = read_image(load_dataset(data, "test", CLASSES).records[0].path)
    boxes = propose(rgb, detector.proposals)
    inputs = onnx_inputs(detector, rgb, boxes, detector.map_settings.scales[0])
    results = []
    for source in (["--work", str(work.root)], ["--model", str(model_file)]):
        out = tmp_path / f"{source[0][2:]}.onnx"
        capsys.readouterr()
        assert run_app(["export", *source, "--format", "onnx", "--out", str(out)]) == 0
        assert capsys.readouterr().out.startswith(f"wrote {out} (")
        session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        results.append(session.run(None, inputs.feed()))
    assert results[0][0].shape == (len(boxes), len(CLASSES))
    for from_work, from_file in zip(*results, strict=True):
        np.testing.assert_array_equal(from_work, from_file)
