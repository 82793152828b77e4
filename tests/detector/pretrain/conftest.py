"""Fixtures shared by the tests in this folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.detector.pretrain.shared import make_color_tree


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return make_color_tree(tmp_path_factory.mktemp("tree"), per_class=16)
