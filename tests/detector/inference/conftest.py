"""Fixtures of the Python API tests: one tiny trained work folder, trained once."""

from __future__ import annotations

from pathlib import Path

import pytest

from sppdet.cache.workdir import WorkDir
from tests.detector.inference.shared import train_tiny


@pytest.fixture(scope="package")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, WorkDir]:
    """(VOC data, work folder) after every stage of ``tiny_config``, detect included."""
    return train_tiny(tmp_path_factory.mktemp("api"))
