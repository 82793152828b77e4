"""Tests of ``sppdet.proposals.ranking``."""

from __future__ import annotations

import numpy as np

from sppdet.proposals.ranking import finalize, hierarchy_rank_keys, storage_dtype

# ------------------------------------------------------------------------------- ranking


def test_finalize_clips_filters_sorts_dedupes_and_cuts() -> None:
    boxes = np.array(
        [
            [10, 10, 40, 40],  # key 3
            [0, 0, 15, 50],  # 16 px wide: dropped by min_side 20
            [-5, 2, 30.4, 60],  # clipped to x1 = 0, rounded x2 = 30; key 1
            [10, 10, 40, 40],  # duplicate with the better key 0: this copy is kept
            [50, 50, 120, 90],  # clipped to x2 = 99, y2 = 79; key 1, ties by coordinates
        ]
    )
    keys = np.array([3.0, 0.5, 1.0, 0.0, 1.0])
    out = finalize(boxes, keys, width=100, height=80, min_side=20, max_boxes=10)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(
        out, [[10, 10, 40, 40], [0, 2, 30, 60], [50, 50, 99, 79]]
    )  # key 0, then the two key-1 boxes by x1; the key-3 duplicate is gone
    assert len(finalize(boxes, keys, 100, 80, 20, max_boxes=2)) == 2
    assert finalize(np.zeros((0, 4)), np.zeros(0), 100, 80, 20, 5).shape == (0, 4)


def test_hierarchy_rank_keys_are_rnd_times_area_rank_and_ignore_input_order() -> None:
    group = np.array([[0, 0, 9, 9], [0, 0, 99, 99], [5, 5, 54, 54], [10, 0, 19, 9]], float)
    keys = hierarchy_rank_keys([group], seed=7)
    # canonical order: area descending, ties (the two 10x10 boxes) by x1 -> positions 1..4
    rnd = np.random.default_rng([7, 0]).random(4)
    expected = np.empty(4)
    expected[[1, 2, 0, 3]] = rnd * np.arange(1, 5)
    np.testing.assert_allclose(keys, expected)
    shuffled = group[[3, 1, 0, 2]]
    np.testing.assert_allclose(hierarchy_rank_keys([shuffled], seed=7), expected[[3, 1, 0, 2]])
    # each group draws from its own stream: adding a group leaves the first one's keys alone
    both = hierarchy_rank_keys([group, group[:2]], seed=7)
    np.testing.assert_allclose(both[:4], expected)
    assert not np.allclose(both[4:], expected[:2])


def test_storage_dtype() -> None:
    assert storage_dtype(640, 480) is np.int16
    assert storage_dtype(32768, 10) is np.int16  # largest index 32767 still fits
    assert storage_dtype(40000, 10) is np.int32
