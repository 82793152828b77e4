"""Tests of ``sppdet.detector.spp.image_spp``: whole-map SPP is window SPP over the full map, and
the paper's sliding form agrees with the bins exactly where ``sliding_agrees`` says."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from sppdet.detector.spp.image_spp import image_spp, sliding_agrees, sliding_bins
from sppdet.detector.spp.pooler import window_spp


def test_sliding_form_agrees_only_where_documented():
    rng = np.random.default_rng(7)
    maps = torch.from_numpy(rng.standard_normal((1, 3, 13, 13)).astype(np.float32))
    assert torch.equal(image_spp(maps, form="sliding"), image_spp(maps))  # the paper's 224 input
    assert sliding_bins(10, 6) == 9 and not sliding_agrees(10, 6)
    assert sliding_bins(11, 3) == 3 and not sliding_agrees(11, 3)  # [0,4) [3,7) [6,10): misses 10
    with pytest.raises(ValueError, match="bins"):
        image_spp(torch.zeros(1, 1, 10, 10), (6,), form="sliding")
    # sliding_agrees against the pooling layers themselves, on a map where every value differs.
    for a in range(1, 41):
        conv = torch.from_numpy(rng.permutation(a * a).astype(np.float32)).view(1, 1, a, a)
        for n in (1, 2, 3, 6):
            if a < n:
                assert not sliding_agrees(a, n)
                continue
            slid = nn.functional.max_pool2d(conv, math.ceil(a / n), a // n)
            same = slid.shape[-1] == n and torch.equal(
                slid, nn.functional.adaptive_max_pool2d(conv, n)
            )
            assert sliding_agrees(a, n) == same, (a, n)


def test_image_spp_equals_window_spp_over_the_full_map():
    rng = np.random.default_rng(6)
    for height, width in ((13, 13), (10, 17), (2, 9), (1, 1)):
        maps = torch.from_numpy(rng.standard_normal((3, 4, height, width)).astype(np.float32))
        whole = image_spp(maps)
        full = np.array([[0, 0, width - 1, height - 1]])
        for b in range(3):
            assert np.array_equal(whole[b].numpy(), window_spp(maps[b], full)[0].numpy())
