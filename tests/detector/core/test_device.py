"""Tests of ``sppdet.detector.core.device``."""

from __future__ import annotations

import pytest
import torch

from sppdet.detector.core.device import resolve_device
from sppdet.detector.core.errors import SppdetError


def test_devices():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(SppdetError, match="no CUDA device"):
            resolve_device("cuda")
    with pytest.raises(SppdetError, match="unknown --device"):
        resolve_device("tpu")
