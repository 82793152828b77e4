"""Fixtures shared by the tests in this folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from sppdet.cache.workdir import WorkDir
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
