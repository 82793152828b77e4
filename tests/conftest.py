"""Shared pytest settings: deterministic, single-threaded numerics for reproducible tests."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed_everything() -> None:
    np.random.seed(0)  # noqa: NPY002 - seeds code that uses the legacy global generator
    torch.manual_seed(0)
