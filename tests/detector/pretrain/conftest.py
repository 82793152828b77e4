"""Fixtures shared by the tests in this folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.detector.pretrain.shared import make_color_tree


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return make_color_tree(tmp_path_factory.mktemp("tree"), per_class=16)


@pytest.fixture(scope="module")
def small_tree(tmp_path_factory) -> Path:
    """Twelve training images: an epoch in a second or two."""
    return make_color_tree(tmp_path_factory.mktemp("small"), per_class=6, splits=("train",))


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread: on two cores shared with other work, small convolutions run several
    times faster than with two threads waiting for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
