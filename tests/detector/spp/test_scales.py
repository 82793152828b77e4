"""Tests of ``sppdet.detector.spp.scales``."""

from __future__ import annotations

import numpy as np
import pytest

from sppdet.detector.spp.scales import best_scale, best_scale_area, best_scale_released

SCALES = (480, 576, 688, 874, 1200)


def test_released_rule_on_hand_computed_boxes():
    boxes = np.array([[0, 0, 99, 99], [10, 10, 109, 109], [0, 0, 499, 374]], float)
    # 100x100 in a 375-short image: expected round(208*375/100) = 780 -> 688 (92 away, 874 is 94).
    # Whole 500x375 image: 208*375/sqrt(187500) = 180.1 -> 180 -> 480.
    assert best_scale_released(boxes, 375, SCALES).tolist() == [2, 2, 0]
    # Tie: a 208x208 box with min side 632 expects 632, halfway between 576 and 688 -> 576.
    assert best_scale_released(np.array([[0, 0, 207, 207]]), 632, SCALES).tolist() == [1]
    # Rounding is half up: 208*373/416 = 186.5 -> 187 (numpy's half-to-even would give 186),
    # so with scales (185, 188) the rule picks 188.
    assert best_scale_released(np.array([[0, 0, 415, 415]]), 373, (185, 188)).tolist() == [1]


def test_area224_rule_on_hand_computed_boxes():
    # 100x100 box, min side 375: scaled areas 16384, 23593, 33662, 54323, 102400 for the five
    # scales; closest to 224^2 = 50176 is 54323 (scale 874), unlike the released rule (688).
    boxes = np.array([[0, 0, 99, 99], [0, 0, 499, 374]], float)
    assert best_scale_area(boxes, 375, SCALES).tolist() == [3, 0]
    assert best_scale(boxes, 375, SCALES, "area224").tolist() == [3, 0]
    assert best_scale(boxes, 375, SCALES, "released").tolist() == [2, 0]
    with pytest.raises(ValueError):
        best_scale(boxes, 375, SCALES, "nearest")
