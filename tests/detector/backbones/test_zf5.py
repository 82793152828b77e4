"""Tests of ``sppdet.detector.backbones.zf5``."""

from __future__ import annotations

import numpy as np
import torch

from sppdet.detector.backbones.zf5 import WithinChannelLRN


def test_within_channel_lrn_formula():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 5, 6)) * 40
    alpha = 5e-5
    want = np.empty_like(x)
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    for i in range(5):
        for j in range(6):
            local = (padded[:, :, i : i + 3, j : j + 3] ** 2).sum(axis=(2, 3))
            want[:, :, i, j] = x[:, :, i, j] * (1 + alpha / 9 * local) ** -0.75
    got = WithinChannelLRN()(torch.from_numpy(x)).numpy()
    assert np.allclose(got, want, rtol=1e-12, atol=0)
    assert not np.allclose(got, x)  # 40-sized activations are visibly normalised
