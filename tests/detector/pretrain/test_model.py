"""Tests of ``sppdet.detector.pretrain.model``."""

from __future__ import annotations

import pytest
import torch

from sppdet.detector.core.errors import SppdetError
from sppdet.detector.pretrain.model import build_classifier, check_input_sizes


def test_spp_output_length_is_the_same_at_every_size():
    model = build_classifier("zf5", 3, (1, 2, 3, 6), 8, 0.5, 0, 0.01).eval()
    with torch.no_grad():
        for size in (48, 64, 97):
            assert model(torch.zeros(2, 3, size, size)).shape == (2, 3)
    with pytest.raises(SppdetError, match="--sizes 8: too small for the zf5 trunk"):
        check_input_sizes(model.trunk, (64, 8))
