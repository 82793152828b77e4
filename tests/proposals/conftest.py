"""Fixtures shared by the tests in this folder."""

from __future__ import annotations

import numpy as np
import pytest

from tests.proposals.shared import SCENE
from tests.scenes import draw_scene


@pytest.fixture(scope="module")
def scene() -> np.ndarray:
    return draw_scene(120, 160, SCENE, seed=3)
