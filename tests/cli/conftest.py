"""Fixtures of the CLI tests: one tiny trained work folder, trained once for the package."""

from __future__ import annotations

from pathlib import Path

import pytest

from sppdet.cache.workdir import WorkDir
from tests.detector.inference.shared import train_tiny


@pytest.fixture(scope="package")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, WorkDir]:
    """(VOC data, work folder) after every stage, detect on the test split included (the
    Python API tests' ``train_tiny``: generated data, seconds of training)."""
    return train_tiny(tmp_path_factory.mktemp("cli-trained"))
