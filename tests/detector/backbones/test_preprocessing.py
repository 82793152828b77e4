"""Tests of ``sppdet.detector.backbones.preprocessing``."""

from __future__ import annotations

import numpy as np
import pytest

from sppdet.detector.backbones.preprocessing import TORCHVISION_PREPROCESSING, Preprocessing
from sppdet.detector.backbones.zf5 import ZF5_PREPROCESSING
from sppdet.detector.core.errors import SppdetError


def test_preprocessing_on_one_pixel():
    image = np.array([[[10, 20, 30]]], np.uint8)  # RGB
    zf5 = ZF5_PREPROCESSING(image)[0, :, 0, 0].tolist()
    assert zf5 == [30 - 128, 20 - 128, 10 - 128]  # BGR, 0-255, mean 128
    tv = TORCHVISION_PREPROCESSING(image)[0, :, 0, 0].numpy()
    want = (np.array([10, 20, 30]) / 255 - np.array([0.485, 0.456, 0.406])) / np.array(
        [0.229, 0.224, 0.225]
    )
    assert np.allclose(tv, want, atol=1e-6)
    round_trip = Preprocessing.from_dict(TORCHVISION_PREPROCESSING.to_dict())
    assert round_trip == TORCHVISION_PREPROCESSING
    with pytest.raises(SppdetError, match="channel_order"):
        Preprocessing.from_dict({**ZF5_PREPROCESSING.to_dict(), "channel_order": "GBR"})
