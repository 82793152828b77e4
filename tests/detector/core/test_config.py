"""Presets and overrides: every constant named once, paper values where the paper differs."""

from __future__ import annotations

import dataclasses

import pytest

from sppdet.cache.fingerprint import fingerprint
from sppdet.detector.core.config import (
    PAPER_SCALES_5,
    RELEASED_SCALES_5,
    BboxConfig,
    FeatureConfig,
    FinetuneConfig,
    SppConfig,
    as_dict,
    override,
    preset,
    section_from_dict,
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
    with pytest.raises(SppdetError, match="demo, paper, quick-cpu, released"):
        preset("fast")


def test_demo_preset_is_quick_cpu_with_a_300_batch_finetuning() -> None:
    demo, quick = preset("demo"), preset("quick-cpu")
    assert (demo.finetune.iterations, demo.finetune.lr_steps) == (300, (225,))
    assert (demo.demo.images, demo.demo.drawings) == (80, 6)
    # Everything else is quick-cpu's.
    short = dataclasses.replace(quick.finetune, iterations=300, lr_steps=(225,))
    assert dataclasses.replace(quick, preset="demo", finetune=short) == demo


def test_default_sections_keep_their_fingerprints() -> None:
    """Constants named outside the sections (fc6's and the regressors' norm samples) must not
    enter the models' fingerprints: these are the values before they were named."""
    # Issue 16: --holdout (off) and the released bias learning rate: a new fingerprint.
    assert fingerprint(as_dict(FinetuneConfig())) == "16ac0ac6e3552540"
    # Issue 16: every sample (no per-image cap) and the SVMs' norm sample size: a new fingerprint.
    assert fingerprint(as_dict(BboxConfig())) == "babb9a612edebe1b"


def test_a_retired_setting_recorded_by_an_older_version_is_dropped() -> None:
    recorded = {**as_dict(BboxConfig()), "max_samples_per_image": 32}
    assert section_from_dict(BboxConfig, recorded, "settings.json", "fix") == BboxConfig()
    with pytest.raises(SppdetError, match="unknown BboxConfig settings typo_setting"):
        section_from_dict(BboxConfig, {"typo_setting": 1}, "settings.json", "fix")


def test_section_from_dict_rebuilds_a_recorded_section() -> None:
    recorded = as_dict(FeatureConfig(scales=(480, 688), flip=True))
    assert recorded["scales"] == [480, 688]  # JSON has lists
    rebuilt = section_from_dict(FeatureConfig, recorded, "settings.json", "rerun")
    assert rebuilt == FeatureConfig(scales=(480, 688), flip=True)
    # Keys it lacks keep their defaults.
    assert section_from_dict(SppConfig, {"pyramid": [1, 2]}, "x", "y") == SppConfig(pyramid=(1, 2))


def test_section_from_dict_refuses_unknown_keys_naming_section_keys_and_fix() -> None:
    recorded = {**as_dict(SppConfig()), "levels": 4, "bins": [1, 2]}
    with pytest.raises(SppdetError) as error:
        section_from_dict(SppConfig, recorded, "WORK/settings.json", "rerun `sppdet x`")
    assert str(error.value) == (
        "WORK/settings.json: unknown SppConfig settings bins, levels; rerun `sppdet x`"
    )
