"""Tests of ``sppdet.detector.spp.bins``."""

from __future__ import annotations

import torch

from sppdet.detector.spp.bins import table_level, table_order


def test_table_level_is_the_smallest_that_covers_a_run_with_two_lookups():
    length = torch.arange(1, 5000)
    k = table_level(length)
    assert torch.all(2**k <= length) and torch.all(length <= 2 ** (k + 1))
    assert torch.all((k == 0) | (2**k < length))  # k - 1 would leave a gap between lookups
    assert k[:9].tolist() == [0, 0, 1, 1, 2, 2, 2, 2, 3]  # lengths 1..9


def test_table_order_builds_the_needed_tables_from_built_sources():
    needed = [(1, 1), (1, 3), (2, 3), (3, 0), (0, 2)]
    order = table_order(needed)
    built = [pair for pair, _ in order]
    assert order[0] == ((0, 0), None) and len(set(built)) == len(built)
    assert set(needed) <= set(built)
    for i, (pair, source) in enumerate(order[1:], 1):
        assert source in built[:i]  # built before it
        assert (pair[0] - source[0], pair[1] - source[1]) in ((1, 0), (0, 1))
    # Not the 16 tables of the full grid up to (3, 3): the needed ones and the shortest paths
    # to them ((1, 3) continues from (0, 2) through (1, 2); (3, 0) goes up from (0, 0)).
    assert set(built) == set(needed) | {(0, 0), (0, 1), (1, 2), (1, 0), (2, 0)}
    assert table_order([]) == [((0, 0), None)]
