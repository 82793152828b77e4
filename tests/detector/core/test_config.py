"""Presets and overrides: every constant named once, paper values where the paper differs."""

from __future__ import annotations

import pytest

from sppdet.detector.core.config import (
    PAPER_SCALES_5,
    RELEASED_SCALES_5,
    as_dict,
    override,
    preset,
)
from sppdet.detector.core.errors import SppdetError


def test_released_defaults_follow_spec() -> None:
    cfg = preset("released")
    assert cfg.features.scales == RELEASED_SCALES_5 == (480, 576, 688, 874, 1200)
    assert cfg.spp.pyramid == (1, 2, 3, 6) and cfg.spp.scale_rule == "released"
    assert (cfg.svm.C, cfg.svm.positive_weight, cfg.svm.bias_feature) == (0.001, 2.0, 10.0)
    assert (cfg.svm.hard_threshold, cfg.svm.evict_threshold) == (-1.0001, -1.2)
    assert (cfg.detect.score_threshold, cfg.detect.nms_iou, cfg.detect.max_per_class) == (
        -1.5,
        0.3,
        100,
    )
    assert cfg.bbox.ridge_lambda == 4000.0
    assert (cfg.finetune.base_lr, cfg.finetune.lr_steps) == (1e-3, (30_000, 60_000))


def test_paper_preset_differs_where_the_paper_does() -> None:
    cfg = preset("paper")
    assert cfg.features.scales == PAPER_SCALES_5 == (480, 576, 688, 864, 1200)
    assert cfg.spp.scale_rule == "area224"
    assert (cfg.finetune.base_lr, cfg.finetune.lr_steps, cfg.finetune.iterations) == (
        1e-4,
        (250_000,),
        300_000,
    )


def test_override_ignores_options_not_given() -> None:
    features = override(preset("released").features, max_size=None, dtype="float32")
    assert features.dtype == "float32" and features.max_size == 2000
    assert as_dict(features)["scales"] == [480, 576, 688, 874, 1200]


def test_unknown_preset_lists_choices() -> None:
    with pytest.raises(SppdetError, match="paper, quick-cpu, released"):
        preset("fast")
