"""The model file: a round trip without the work folder, plain contents, refused files, and a
model without fc layers (SVMs on pool5)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from sppdet.cache.fingerprint import fingerprint
from sppdet.cache.workdir import WorkDir
from sppdet.detector import Detector
from sppdet.detector.backbones.trunk import build_trunk
from sppdet.detector.core.config import SvmConfig
from sppdet.detector.core.errors import SppdetError
from sppdet.detector.data.datasets import load_dataset
from sppdet.detector.data.images import read_image
from sppdet.detector.detection.scorer import detector_fingerprint
from sppdet.detector.detection.stage import run_detect
from sppdet.detector.inference.model import (
    MODEL_FORMAT_VERSION,
    model_from_work,
    read_model_file,
    save_model_file,
)
from sppdet.detector.training.inputs import open_split
from sppdet.detector.training.svm import run_train_svm
from tests.detector.inference.shared import CLASSES, assert_as_written, assert_same, tiny_config


def _test_images(data: Path, count: int = 3) -> list[np.ndarray]:
    return [read_image(r.path) for r in load_dataset(data, "test", CLASSES).records[:count]]


def test_the_file_alone_gives_the_work_folders_detections(trained, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Exported from a copy of the work folder, moved to a fresh folder, the copy deleted: the
    file loads and detects exactly as the work folder does."""
    data, work = trained
    images = _test_images(data)
    copy = WorkDir.at(shutil.copytree(work.root, tmp_path / "copy"))
    written = save_model_file(model_from_work(copy), tmp_path / "out" / "model.sppdet")
    moved = shutil.copy(written, tmp_path / "elsewhere.sppdet")
    shutil.rmtree(copy.root)
    shutil.rmtree(written.parent)
    from_file = Detector.load(moved, device="cpu").predict(images, score_threshold=None)
    from_work = Detector.load(work.root, device="cpu").predict(images, score_threshold=None)
    assert sum(len(d) for d in from_work) > 0
    for found, expected in zip(from_file, from_work, strict=True):
        assert_same(found, expected)


def test_the_file_holds_tensors_and_plain_values(trained, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, work = trained
    path = save_model_file(model_from_work(work), tmp_path / "model.sppdet")
    model = torch.load(path, weights_only=True)  # no code runs; a foreign object fails here
    assert _leaf_types(model) <= {torch.Tensor, str, int, float, bool, type(None)}
    assert model["format_version"] == MODEL_FORMAT_VERSION
    assert model["classes"] == list(CLASSES)
    trunk = build_trunk(model["trunk"]["backbone"]).features.state_dict()
    assert sorted(model["trunk"]["state"]) == sorted(trunk)
    assert model["store"]["scales"] == [96, 128] and model["store"]["dtype"] == "float16"
    assert model["svm"]["layer"] == "fc7" and model["svm"]["finetuned"] is True
    head = model["head"]["state"]
    assert model["svm"]["weights"].shape == (len(CLASSES), head["fc7.weight"].shape[0])
    assert head["fc8.weight"].shape[0] == len(CLASSES) + 1
    assert model["bbox"]["weights"].shape[0] == len(CLASSES)
    proposals = tiny_config().proposals
    assert model["proposals"]["method"] == proposals.method
    assert model["proposals"]["max_boxes"] == proposals.max_boxes
    expected = detector_fingerprint(work, tiny_config().detect, bbox=True)
    assert model["fingerprint"] == fingerprint(expected)
    assert model["made_from"]["svm"] == work.load_model("svm", "")["made_from"]


def _leaf_types(value: object) -> set[type]:
    if isinstance(value, dict):
        assert all(isinstance(k, str) for k in value)
        return set().union(*(_leaf_types(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(_leaf_types(v) for v in value)) if value else set()
    return {torch.Tensor if isinstance(value, torch.Tensor) else type(value)}


def test_refused_files_are_one_line_errors(trained, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, work = trained
    model = model_from_work(work)
    good = save_model_file(model, tmp_path / "good.sppdet")
    truncated = tmp_path / "truncated.sppdet"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    newer = save_model_file({**model, "format_version": 2}, tmp_path / "newer.sppdet")
    lacking = save_model_file(
        {k: v for k, v in model.items() if k != "svm"}, tmp_path / "lacking.sppdet"
    )
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    cases = [
        (truncated, f"{truncated}: .* ; export it again with `sppdet export`"),
        (newer, f"{newer}: model file format version 2, .* ; upgrade sppdet"),
        (lacking, f"{lacking}: model file lacks svm ; export it again"),
        (foreign, f"{foreign}: not an sppdet model file ; pass a file written by"),
        (tmp_path / "nothing", "nothing: no such work folder or model file ; pass"),
    ]
    for path, message in cases:
        with pytest.raises(SppdetError, match=message) as error:
            Detector.load(path, device="cpu")
        assert "\n" not in str(error.value)
    with pytest.raises(SppdetError, match="a folder ; name the model file to write"):
        save_model_file(model, tmp_path)
    assert read_model_file(good)["classes"] == list(CLASSES)


def test_pool5_svms_need_no_head(trained, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """SVMs on pool5: no head in the file, which detects as the detect stage does."""
    data, work = trained
    copy = WorkDir.at(shutil.copytree(work.root, tmp_path / "copy"))
    train = open_split(copy, data, "trainval", CLASSES)
    run_train_svm(copy, train, SvmConfig(layer="pool5", norm_sample_windows=300), finetuned=False)
    run_detect(copy, open_split(copy, data, "test", CLASSES), tiny_config().detect, force=True)
    model = model_from_work(copy)
    assert model["head"] is None and model["svm"]["layer"] == "pool5"
    path = save_model_file(model, tmp_path / "model.sppdet")
    records = load_dataset(data, "test", CLASSES).records
    detector = Detector.load(path, device="cpu")
    found = detector.predict([r.path for r in records], None)
    limit = detector.scorer.cfg.max_per_split_factor * len(records)
    assert_as_written(found, records, copy.detections("test"), limit)
    with pytest.raises(SppdetError, match="the softmax scorer needs the fine-tuned fc8"):
        Detector.load(path, device="cpu", scorer="softmax")
