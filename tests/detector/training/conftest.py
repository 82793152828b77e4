"""Fixtures shared by the tests in this folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from sppdet.cache.workdir import WorkDir
from tests.detector.training.shared import make_split


@pytest.fixture(scope="package")  # built once: each test trains a different model in it
def split(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, WorkDir]:
    return make_split(tmp_path_factory.mktemp("training"))
