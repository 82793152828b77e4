"""``sppdet bench``: its windows, its SPP path against the pipeline's cache, the ratios, the CLI."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sppdet.cli.app import run_app
from sppdet.cli.main import load_commands
from sppdet.detector.bench import (
    PARTS,
    ImageBench,
    PrecisionCheck,
    Timer,
    _mean_check,
    bench_windows,
    make_bench,
    speedups,
    spp_pool5,
)
from sppdet.detector.core.config import FeatureConfig, preset
from sppdet.detector.data.datasets import load_dataset
from sppdet.detector.data.images import read_image
from sppdet.detector.data.synthetic import make_synthetic_voc
from sppdet.detector.features.reader import FeatureCache
from sppdet.detector.features.writer import cache_features
from sppdet.detector.spp import native as spp_native

load_commands()


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bench")
    return make_synthetic_voc(root / "data", num_images=4, seed=2, image_size=(90, 120))


def test_windows_are_the_proposals_then_random_boxes_inside_the_image() -> None:
    proposals = np.array([[0, 0, 10, 10], [5, 5, 40, 30]], np.int16)
    boxes = bench_windows(proposals, 50, height=60, width=80, seed=3)
    assert boxes.shape == (50, 4) and boxes.dtype == np.float32
    np.testing.assert_array_equal(boxes[:2], proposals)
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 79).all() and (boxes[:, 3] <= 59).all()
    assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
    np.testing.assert_array_equal(bench_windows(proposals, 1, 60, 80, 0), proposals[:1])


def test_speedups_by_hand() -> None:
    per_image = dict.fromkeys(PARTS, 0.0)
    per_image.update(
        rcnn_conv=10.0, rcnn_fc=1.0, spp_conv_1=0.08, spp_pool_1=0.02, spp_conv_5=0.4,
        spp_pool_5=0.1, spp_fc=0.9,
    )  # fmt: skip
    ratios = speedups(per_image)
    assert ratios["conv_1_scale"] == pytest.approx(10.0 / 0.1)
    assert ratios["conv_fc_1_scale"] == pytest.approx(11.0 / 1.0)
    assert ratios["conv_5_scale"] == pytest.approx(10.0 / 0.5)
    assert ratios["conv_fc_5_scale"] == pytest.approx(11.0 / 1.4)


def test_mean_check_takes_the_worst_maxima_and_the_mean_of_the_rest() -> None:
    a = PrecisionCheck(0.5, 0.1, 2.0, 0.25, 1.0)
    b = PrecisionCheck(0.125, 0.3, 4.0, 0.75, 0.5)
    assert _mean_check([a, b]) == PrecisionCheck(0.5, 0.2, 3.0, 0.75, 0.75)
    assert _mean_check([]) is None


def test_image_json_has_a_check_with_mixed_precision_only() -> None:
    seconds = dict.fromkeys(PARTS, 0.5)
    plain = ImageBench("img1", 24, 7, seconds, None).to_json()
    assert plain == {"windows": 24, "proposals": 7, "image_id": "img1", "seconds": seconds}
    check = PrecisionCheck(0.5, 0.1, 2.0, 0.25, 1.0)
    mixed = ImageBench("img1", 24, 7, seconds, check).to_json()
    assert mixed["check"] == {
        "spp_max_abs_score_diff": 0.5,
        "spp_mean_abs_score_diff": 0.1,
        "score_std": 2.0,
        "rcnn_max_abs_score_diff": 0.25,
        "same_detections": 1.0,
    }


def test_bench_spp_features_equal_the_pipeline_cache(data: Path, tmp_path: Path) -> None:
    """The benchmark times the same computation the pipeline runs: cache + FeatureCache.pooled."""
    dataset = load_dataset(data, "test")
    features = FeatureConfig(scales=(96, 130), dtype="float32", device="cpu")
    cache_features(dataset, tmp_path, features, progress=False)
    cfg = preset("released")
    cfg = dataclasses.replace(cfg, features=dataclasses.replace(cfg.features, max_size=2000))
    bench = make_bench(features, cfg, "fp32")
    record = dataset.records[0]
    boxes = bench_windows(np.zeros((0, 4)), 40, record.height, record.width, seed=1)
    got = spp_pool5(
        bench, read_image(record.path), boxes, (96, 130), Timer(bench.device), "x", "fp32"
    )
    with FeatureCache.open(tmp_path, "test") as cache:
        expected = cache.pooled(record.image_id, boxes)
    # Both paths run the same five float32 convolutions, but may reduce each layer's fan-in (at
    # most 256*3*3 = 2,304 products) in another order: about sqrt(2,304)*eps = 48 * 1.2e-7 per
    # layer, 3e-5 over five layers, with a factor of 4 to spare. Values near zero are bounded by
    # the same relative error of the map's largest value.
    rtol = 4 * 5 * 48 * torch.finfo(torch.float32).eps
    torch.testing.assert_close(got, expected, rtol=rtol, atol=rtol * float(expected.abs().max()))


def test_cli_reports_every_part_and_the_precision_check(data: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "bench.json"
    args = ["bench", "--data", str(data), "--images", "2", "--windows", "24", "--out", str(out)]
    scales = ["--one-scale", "96", "--five-scales", "64,80,96,112,128", "--precision", "bf16"]
    assert run_app([*args, *scales]) == 0
    report = json.loads(out.read_text())
    assert set(report["per_image"]) == set(PARTS)
    assert all(v > 0 for v in report["per_image"].values())
    assert report["speedup"] == pytest.approx(speedups(report["per_image"]))
    assert [im["windows"] for im in report["images"]] == [24, 24]
    assert sorted(report) == sorted([
        "backbone", "weights", "device", "device_name", "threads", "precision", "pooling",
        "windows", "one_scale", "five_scales", "proposal_method", "images", "per_image",
        "speedup", "check",
    ])  # fmt: skip
    assert report["one_scale"] == [96] and report["five_scales"] == [64, 80, 96, 112, 128]
    for image in report["images"]:
        assert sorted(image) == ["check", "image_id", "proposals", "seconds", "windows"]
        assert set(image["seconds"]) == set(PARTS)
    assert report["pooling"] == (["native"] if spp_native.built() else ["torch"])  # CPU maps
    check = report["check"]
    assert 0 < check["spp_max_abs_score_diff"] < check["score_std"]  # bf16 moves scores a little
    assert 0.0 <= check["same_detections"] <= 1.0
    printed = capsys.readouterr().out
    assert "speed-up over R-CNN, SPP 1 scale" in printed and "bf16 against fp32" in printed
    assert run_app([*args, "--images", "0"]) == 2
    assert "--images 0" in capsys.readouterr().err
