"""``sppdet bench``: its windows, its SPP path against the pipeline's cache, the ratios, the CLI."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from sppdet.cli.app import run_app
from sppdet.cli.main import load_commands
from sppdet.detector import bench as bench_module
from sppdet.detector.backbones.weights import load_backbone
from sppdet.detector.bench import (
    PARTS,
    Bench,
    ImageBench,
    PrecisionCheck,
    Timer,
    _mean_check,
    bench_windows,
    bounds,
    make_bench,
    part_macs,
    run_bench,
    speedups,
    spp_pool5,
    spp_shares,
    trunk_macs,
)
from sppdet.detector.core.config import FeatureConfig, PipelineConfig, preset
from sppdet.detector.data.datasets import load_dataset
from sppdet.detector.data.images import read_image
from sppdet.detector.data.synthetic import make_synthetic_voc
from sppdet.detector.features.rcnn_warp import RcnnFeaturizer
from sppdet.detector.features.reader import FeatureCache
from sppdet.detector.features.writer import cache_features
from sppdet.detector.heads.fc import FcHead
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


def zf5_macs(height: int, width: int) -> int:
    """ZF-5's multiply-adds by hand: output cells x output channels x fan-in, per conv (SPEC.md:
    conv1 7x7/2 pad 1, pool 3/2 ceil, conv2 5x5/2, pool 3/2 ceil, conv3-5 3x3 pad 1)."""

    def pool(a: int) -> int:
        return -(-(a - 3) // 2) + 1

    h1, w1 = (height + 2 - 7) // 2 + 1, (width + 2 - 7) // 2 + 1
    h2, w2 = (pool(h1) - 5) // 2 + 1, (pool(w1) - 5) // 2 + 1
    h3, w3 = pool(h2), pool(w2)
    conv3_5 = 384 * 256 * 9 + 384 * 384 * 9 + 256 * 384 * 9
    return h1 * w1 * 96 * 3 * 49 + h2 * w2 * 256 * 96 * 25 + h3 * w3 * conv3_5


def test_multiply_adds_by_hand() -> None:
    assert zf5_macs(224, 224) == 1_109_410_944  # 1.11 G per R-CNN window (BENCHMARKS.md)
    cfg = preset("released")
    cfg = dataclasses.replace(
        cfg,
        features=dataclasses.replace(cfg.features, max_size=2000),
        bench=dataclasses.replace(cfg.bench, one_scale=(96,), five_scales=(64, 96), svm_classes=3),
    )
    torch.manual_seed(0)
    head = FcHead(12800, 24, 2, 0.0).compressed((5, 7))
    bench = Bench(load_backbone("zf5", "random"), head, torch.randn(3, 24), cfg, "cpu", "fp32")
    assert trunk_macs(bench, 224, 224) == zf5_macs(224, 224)
    assert trunk_macs(bench, 100, 161) == zf5_macs(100, 161)
    macs = part_macs(bench, height=90, width=120, windows=10, warp=224)
    fc = 5 * (12800 + 24) + 7 * (24 + 24)  # rank x (in + out), fc6 then fc7
    # 90 x 120 resized to a shorter side of 96: 96 x 128; of 64: 64 x 85 (85.3 rounded)
    assert macs == {
        "proposals": 0,
        "rcnn_conv": 10 * zf5_macs(224, 224),
        "rcnn_fc": 10 * fc,
        "spp_conv_1": zf5_macs(96, 128),
        "spp_pool_1": 0,
        "spp_conv_5": zf5_macs(64, 85) + zf5_macs(96, 128),
        "spp_pool_5": 0,
        "spp_fc": 10 * fc,
        "svm": 10 * 24 * 3,
        "nms": 0,
    }
    work = speedups({part: float(v) for part, v in macs.items()})
    assert work["conv_fc_1_scale"] == pytest.approx(
        (10 * zf5_macs(224, 224) + 10 * fc) / (zf5_macs(96, 128) + 10 * fc)
    )


def test_bounds_by_hand() -> None:
    per_image = dict.fromkeys(PARTS, 0.0)
    per_image.update(
        rcnn_conv=50.0, rcnn_fc=1.0, spp_conv_1=0.2, spp_pool_1=0.05, spp_conv_5=2.0,
        spp_pool_5=0.1, spp_fc=1.0,
    )  # fmt: skip
    macs = dict.fromkeys(PARTS, 0.0)
    macs.update(rcnn_conv=2000.0, rcnn_fc=100.0, spp_conv_1=16.0, spp_conv_5=100.0, spp_fc=100.0)
    # 1 scale: SPP convolves at 16 / 0.2 = 80 per second and runs fc at 100 per second, so
    # R-CNN would take 2000 / 80 = 25 s of convolutions and 100 / 100 = 1 s of fc.
    got = bounds(per_image, macs)
    assert got["conv_1_scale"] == pytest.approx(25.0 / 0.25)
    assert got["conv_fc_1_scale"] == pytest.approx(26.0 / 1.25)
    assert got["conv_5_scale"] == pytest.approx((2000.0 / 50.0) / 2.1)  # 50 per second
    assert got["conv_fc_5_scale"] == pytest.approx(41.0 / 3.1)


def test_shares_of_the_spp_side() -> None:
    per_image = dict.fromkeys(PARTS, 0.0)
    per_image.update(spp_conv_1=0.3, spp_pool_1=0.1, spp_fc=0.6, svm=0.5, nms=0.5)
    assert spp_shares(per_image, "conv", "1") == pytest.approx(
        {"spp_conv_1": 0.75, "spp_pool_1": 0.25}
    )
    assert spp_shares(per_image, "conv_fc", "1")["spp_fc"] == pytest.approx(0.6)
    assert spp_shares(per_image, "detect", "1")["nms"] == pytest.approx(0.25)


def test_mean_check_takes_the_worst_maxima_and_the_mean_of_the_rest() -> None:
    a = PrecisionCheck(0.5, 0.1, 2.0, 0.25, 1.0)
    b = PrecisionCheck(0.125, 0.3, 4.0, 0.75, 0.5)
    assert _mean_check([a, b]) == PrecisionCheck(0.5, 0.2, 3.0, 0.75, 0.75)
    assert _mean_check([]) is None


def test_image_json_has_a_check_with_mixed_precision_only() -> None:
    seconds = dict.fromkeys(PARTS, 0.5)
    plain = ImageBench("img1", 24, 7, seconds, None).to_json()
    assert plain == {
        "windows": 24, "proposals": 7, "image_id": "img1", "seconds": seconds, "macs": {}
    }  # fmt: skip
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
    args = ["bench", "--data", str(data), "--num-images", "2", "--windows", "24"]
    args += ["--report", str(out), "--preset", "quick-cpu"]
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
        "speedup", "check", "fc_rank", "macs", "gflops", "work_ratio", "bound", "detect",
    ])  # fmt: skip
    assert report["one_scale"] == [96] and report["five_scales"] == [64, 80, 96, 112, 128]
    assert report["fc_rank"] is None
    assert report["macs"]["spp_fc"] == 24 * (12800 * 1024 + 1024 * 1024)  # quick-cpu's head
    assert report["work_ratio"] == pytest.approx(speedups(report["macs"]))
    assert report["bound"] == pytest.approx(bounds(report["per_image"], report["macs"]))
    for part, rate in report["gflops"].items():
        assert rate == pytest.approx(2e-9 * report["macs"][part] / report["per_image"][part])
    parts = ("spp_conv_1", "spp_pool_1", "spp_fc", "svm", "nms")
    assert report["detect"]["1"] == pytest.approx(sum(report["per_image"][p] for p in parts))
    for image in report["images"]:
        assert sorted(image) == ["check", "image_id", "macs", "proposals", "seconds", "windows"]
        assert set(image["seconds"]) == set(PARTS)
    assert report["pooling"] == (["native"] if spp_native.built() else ["torch"])  # CPU maps
    check = report["check"]
    assert 0 < check["spp_max_abs_score_diff"] < check["score_std"]  # bf16 moves scores a little
    assert 0.0 <= check["same_detections"] <= 1.0
    printed = " ".join(capsys.readouterr().out.split())  # as one line, however rich wrapped it
    assert "speed-up over R-CNN, SPP 1 scale" in printed and "bf16 against fp32" in printed
    assert "work ratio" in printed and "bound by" in printed
    quotient = report["speedup"]["conv_1_scale"] / report["bound"]["conv_1_scale"]
    assert f"measured / bound {quotient:.2f}; bound by" in printed
    assert "detect without proposals (SPP conv, pooling, fc6-fc7, SVMs, NMS; full" in printed
    assert run_app([*args, "--num-images", "0"]) == 2
    assert "--images 0" in capsys.readouterr().err
    assert run_app([*args, "--fc-rank", "64"]) == 2
    assert "--fc-rank '64': give two ranks" in capsys.readouterr().err
    assert run_app([*args, "--fc-rank", "2000,8"]) == 2  # the ranks reach the head
    assert "--fc-rank 2000 for fc6 (1024 x 12800)" in capsys.readouterr().err


def _small_bench(**bench: Any) -> PipelineConfig:
    """The released preset with a 48-wide head and a bench of 1 image, 8 windows, small scales."""
    cfg = preset("released")
    return dataclasses.replace(
        cfg,
        finetune=dataclasses.replace(cfg.finetune, fc_dim=48),
        bench=dataclasses.replace(
            cfg.bench,
            **{"images": 1, "windows": 8, "one_scale": (64,), "five_scales": (48, 64)} | bench,
        ),
    )


def test_bench_with_truncated_fc_layers(data: Path) -> None:
    cfg = _small_bench()
    dataset = load_dataset(data, "test")
    features = FeatureConfig(device="cpu")
    report = run_bench(dataset, features, cfg, fc_rank=(8, 4), progress=False)
    assert report.fc_rank == (8, 4)
    assert report.macs["rcnn_fc"] == report.macs["spp_fc"] == 8 * (8 * (12800 + 48) + 4 * 96)
    assert report.work_ratio == pytest.approx(speedups(report.macs))


def test_every_part_is_the_median_of_its_passes(data: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """One pass slowed by other jobs does not decide a part's seconds: the SPP side's parts are
    timed over ``repeats`` passes and the median kept; R-CNN's batches are shared out between the
    passes and timed one by one, its seconds the median per window times the windows. A simulated
    clock advances 1 ms per reading, so a part takes 1 ms plus what is added: fc6-fc7 takes 0 in
    the warm-up, then 0.1, 5 (a pass that waited on another job) and 0.2 s in the SPP side's
    three passes, then 1, 7 and 2 s on R-CNN's windows; R-CNN's pool5 takes 0.01 s per window,
    and its third batch 100 s more."""
    now = [0.0]

    def clock() -> float:
        now[0] += 1e-3
        return now[0]

    durations = iter([0.0, 0.0, 0.1, 5.0, 0.2, 1.0, 7.0, 2.0])
    real_fc7 = bench_module.fc7

    def fc7(bench: Any, pool5: torch.Tensor, precision: str) -> torch.Tensor:
        now[0] += next(durations)
        return real_fc7(bench, pool5, precision)

    batch_sizes = []
    real_pool5 = RcnnFeaturizer.pool5

    def pool5(self: RcnnFeaturizer, image: torch.Tensor, boxes: np.ndarray) -> torch.Tensor:
        batch_sizes.append(len(boxes))
        now[0] += 0.01 * len(boxes) + (100.0 if len(batch_sizes) == 4 else 0.0)
        return real_pool5(self, image, boxes)

    monkeypatch.setattr(bench_module, "fc7", fc7)
    monkeypatch.setattr(RcnnFeaturizer, "pool5", pool5)
    cfg = _small_bench(repeats=3, windows=10)
    cfg = dataclasses.replace(cfg, rcnn=dataclasses.replace(cfg.rcnn, batch_windows=2))
    features = FeatureConfig(device="cpu")
    dataset = load_dataset(data, "test")
    report = run_bench(dataset, features, cfg, progress=False, clock=clock)
    ms = 1e-3  # the clock's step; sums of a few float64 steps round near 1e-15
    assert batch_sizes == [2, 2, 2, 2, 2, 2]  # the warm-up's, then the 10 windows' 5 batches
    assert report.per_image["rcnn_conv"] == pytest.approx(10 * (0.01 + ms / 2), abs=1e-12)
    assert report.per_image["rcnn_fc"] == pytest.approx(2.0 + ms, abs=1e-12)
    assert report.per_image["spp_fc"] == pytest.approx(0.2 + ms, abs=1e-12)  # the median pass
    assert report.per_image["svm"] == pytest.approx(ms, abs=1e-12)
    assert next(durations, None) is None  # fc6-fc7 ran exactly 2 + 3 + 3 times
