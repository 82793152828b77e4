"""Fixtures shared by the tests in this folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from sppdet.cache.workdir import WorkDir
from sppdet.cli.app import run_app
from sppdet.cli.main import load_commands
from sppdet.detector.data.synthetic import make_synthetic_voc
from sppdet.detector.data.voc import load_voc
from sppdet.detector.features.writer import cache_features
from tests.detector.features.shared import CONFIG, make_tiny_voc


@pytest.fixture(scope="module")
def voc(tmp_path_factory) -> Path:
    return make_tiny_voc(tmp_path_factory.mktemp("voc"))


@pytest.fixture(scope="module")
def built(voc, tmp_path_factory):
    work = WorkDir.at(tmp_path_factory.mktemp("work"))
    stats = cache_features(load_voc(voc, "trainval"), work, CONFIG, progress=False)
    return work, stats


@pytest.fixture(scope="session")
def proposed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A synthetic VOC tree and a work folder with the proposals of its trainval and test splits
    (made once: the R-CNN tests of several modules copy it)."""
    load_commands()
    root = tmp_path_factory.mktemp("rcnn")
    data = make_synthetic_voc(root / "data", num_images=8, seed=5, image_size=(120, 160))
    for split in ("trainval", "test"):
        args = ["propose", "--data", str(data), "--split", split, "--max-boxes", "12"]
        assert run_app([*args, "--work", str(root / "work")]) == 0
    return data, root / "work"


@pytest.fixture
def rcnn_work(proposed, tmp_path: Path) -> tuple[Path, WorkDir]:
    """A work folder of its own with the proposals of both splits."""
    data, work = proposed
    shutil.copytree(work, tmp_path / "work")
    return data, WorkDir.at(tmp_path / "work")
