"""Tests of ``sppdet.detector.features.stage``: the options over the preset, the options refused
for R-CNN features, the fc6 note, and the R-CNN way run end to end from the command line."""

from __future__ import annotations

import pytest

from sppdet.cli.app import run_app
from sppdet.cli.main import load_commands
from sppdet.detector.core.config import preset
from sppdet.detector.core.errors import SppdetError
from sppdet.detector.core.parallel import Executor
from sppdet.detector.features.stage import FeatureOptions, fc6_pyramid_note, feature_settings

load_commands()
LOCAL = Executor("local")


def test_options_override_the_presets_sections() -> None:
    paper = preset("paper")
    options = FeatureOptions(scales=(300,), dtype="float32", pyramid=(2, 4), precision="bf16")
    spp = feature_settings(paper, options, LOCAL)
    assert spp.kind == "spp" and spp.features.scales == (300,) and spp.spp.pyramid == (2, 4)
    assert (spp.features.dtype, spp.features.precision) == ("float32", "bf16")
    assert spp.features.max_size == paper.features.max_size  # not given: the preset's
    assert spp.spp.scale_rule == paper.spp.scale_rule
    # R-CNN features take --precision and --dtype into their own section, not the conv5 cache's.
    options = FeatureOptions(kind="rcnn", dtype="float32", precision="bf16")
    rcnn = feature_settings(paper, options, LOCAL)
    assert (rcnn.rcnn.dtype, rcnn.rcnn.precision) == ("float32", "bf16")
    assert rcnn.features.precision == paper.features.precision == "fp32"
    assert rcnn.rcnn.context_padding == paper.rcnn.context_padding


def test_rcnn_refuses_the_options_it_does_not_use() -> None:
    released = preset("released")
    given = FeatureOptions(kind="rcnn", scales=(300,), flip=False)
    with pytest.raises(SppdetError, match=r"^--scales, --flip: not used by --features rcnn"):
        feature_settings(released, given, LOCAL)
    with pytest.raises(SppdetError, match="--executor ray: --features rcnn runs locally only"):
        feature_settings(released, FeatureOptions(kind="rcnn"), Executor("ray"))
    assert feature_settings(released, FeatureOptions(scales=(300,)), Executor("ray")).kind == "spp"


@pytest.mark.parametrize(
    ("backbone", "weights", "pyramid", "note"),
    [
        ("alexnet", "imagenet", (1, 2), "alexnet's ImageNet fc6 expects pyramid 6; with 1,2 fc6"),
        ("vgg16", "imagenet", (1, 2, 3, 6), "vgg16's ImageNet fc6 expects pyramid 7; with 1,2,3,6"),
        ("alexnet", "imagenet", (6,), None),  # the pyramid fc6 was trained on
        ("alexnet", "random", (1, 2), None),  # no pretrained fc6 to lose
        ("zf5", "imagenet", (1, 2), None),  # no torchvision classifier holds ZF-5
        ("lenet", "imagenet", (1, 2), None),  # refused later, with the other settings
    ],
)
def test_fc6_pyramid_note(backbone: str, weights: str, pyramid: tuple[int, ...], note) -> None:  # type: ignore[no-untyped-def]
    options = FeatureOptions(backbone=backbone, weights=weights, pyramid=pyramid)
    got = fc6_pyramid_note(feature_settings(preset("released"), options, LOCAL))
    if note is None:
        assert got is None
    else:
        assert got.startswith(note) and got.endswith("starts from scratch (fc7 is still reused)")


def test_the_pipeline_runs_the_rcnn_way_from_the_cli(rcnn_work, capsys) -> None:  # type: ignore[no-untyped-def]
    data, work = rcnn_work
    common = ["--data", str(data), "--work", str(work.root), "--features", "rcnn"]
    for split in ("trainval", "test"):
        assert run_app(["cache-features", *common, "--split", split]) == 0
    assert run_app(["train-svm", *common, "--layer", "pool5", "--preset", "quick-cpu"]) == 0
    assert work.model("svm-rcnn").is_file() and not work.model("svm").exists()
    assert run_app(["train-bbox", *common]) == 0
    assert run_app(["detect", *common]) == 0
    out = work.detections("test-rcnn")
    assert sorted(p.name for p in out.glob("comp4_det_test_*.txt"))
    assert run_app(["evaluate", "--data", str(data), "--detections", str(out)]) == 0
    assert "mAP" in capsys.readouterr().out
    # Fine-tuned heads exist for SPP features only; the SPP models are not touched.
    assert run_app(["train-svm", *common, "--layer", "fc7", "--finetuned"]) == 2
    assert "--no-finetuned" in capsys.readouterr().err
    assert run_app(["detect", "--data", str(data), "--work", str(work.root)]) == 2
    assert "svm.pt: model not found" in capsys.readouterr().err
    assert run_app(["cache-features", *common, "--scales", "300"]) == 2
    assert "not used by --features rcnn" in capsys.readouterr().err
