"""Tests of ``sppdet.detector.spp.keys``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sppdet.detector.spp.keys import advise_huge_pages, flip_negative_, to_ordered_


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_ordered_keys_sort_like_the_floats_and_map_back(dtype):
    """The pooler takes maxima on integers: float bits with the magnitude of negative numbers
    inverted. Their order must be the floats' order, and the same flip must restore the bits."""
    if dtype == torch.float32:
        rng = np.random.default_rng(10)
        special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 1e-45, -1e-45], np.float32)
        bits = np.concatenate([rng.integers(-(2**31), 2**31, 200_000), special.view(np.int32)])
        bits = torch.from_numpy(bits.astype(np.int32))
    else:  # every 16-bit pattern
        bits = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16)
    values = bits.view(dtype).double()
    number = ~torch.isnan(values)
    keys = bits.clone()
    to_ordered_(keys, dtype)
    order = torch.argsort(keys[number], stable=True)
    assert torch.all(values[number][order].diff() >= 0)  # integer order is float order
    assert values[number][order[0]] == -math.inf and values[number][order[-1]] == math.inf
    assert (keys[~number] > keys[number].max()).all()  # every NaN sorts above +inf
    back = keys.clone()
    flip_negative_(back)
    assert torch.equal(back[number], bits[number])  # numbers map back bit for bit
    assert torch.isnan(back[~number].view(dtype)).all()


def test_advise_huge_pages_changes_no_values():
    tensor = torch.arange(3 << 20, dtype=torch.float32)  # 12 MiB: several whole 2 MiB pages
    advise_huge_pages(tensor)
    advise_huge_pages(tensor[::2])  # not contiguous: no advice, no error
    advise_huge_pages(torch.zeros(3))  # smaller than a page: nothing to advise
    assert torch.equal(tensor, torch.arange(3 << 20, dtype=torch.float32))
    fresh = torch.empty(5 << 20, dtype=torch.float16)
    advise_huge_pages(fresh)
    fresh.fill_(2.5)
    assert bool((fresh == 2.5).all())
