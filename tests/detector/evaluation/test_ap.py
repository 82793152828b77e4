"""Tests of ``sppdet.detector.evaluation.ap``."""

from __future__ import annotations

import numpy as np

from sppdet.detector.evaluation.ap import (
    average_precision_voc07,
    average_precision_voc10,
    paired_iou,
)
from tests.detector.evaluation.shared import GT


def test_ap_formulas_empty_curves_score_zero():
    assert average_precision_voc07(np.zeros(0), np.zeros(0)) == 0.0
    assert average_precision_voc10(np.zeros(0), np.zeros(0)) == 0.0


def test_iou_without_plus_one_would_reject_the_half_box():
    # Guards test_voc's IoU-0.5 cases: in continuous coordinates (0,0,9,4) vs (0,0,9,9) is
    # 36/81 < 0.5, so only the +1 convention makes it a match.
    assert (9 * 4) / (9 * 9) < 0.5
    assert paired_iou(np.array([[0, 0, 9, 4.0]]), np.array([GT], float))[0] == 0.5
