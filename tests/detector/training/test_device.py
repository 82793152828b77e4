"""The training and test stages compute on the runtime's device, through one code path.

The meta device holds shapes without data: a stage given it must fail at its first look at the
numbers (pooling, a score threshold), which shows the device reached the stage; a stage that
dropped it would run to the end on the CPU. On the CPU, the same functions with the reader
thread give the same bits as without it.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

from sppdet.detector.core.config import BboxConfig, DetectConfig, FinetuneConfig, SvmConfig
from sppdet.detector.detection.scorer import WindowScorer, load_window_scorer
from sppdet.detector.detection.stage import run_detect
from sppdet.detector.heads.fc import FcHead
from sppdet.detector.heads.finetune import TrainState, WindowTable, train
from sppdet.detector.heads.svm import LinearScorer, TrainingImage, train_svms
from sppdet.detector.training.bbox import run_train_bbox
from sppdet.detector.training.finetune import RoundMaps, run_finetune
from sppdet.detector.training.inputs import open_split, window_features
from sppdet.detector.training.runtime import Runtime
from sppdet.detector.training.svm import run_train_svm
from tests.detector.training.shared import CLASSES

META = Runtime(torch.device("meta"))
FINETUNE = FinetuneConfig(
    iterations=6, lr_steps=(4,), batch_size=16, fc_dim=32, checkpoint_every=3, log_every=3,
    images_per_round=2,
)  # fmt: skip
NO_DATA = "meta"  # in every error torch raises on looking at a meta tensor's numbers


@pytest.mark.parametrize(
    "stage",
    [
        lambda work, inputs: run_finetune(work, inputs, FINETUNE, force=True, runtime=META),
        lambda work, inputs: run_train_svm(
            work, inputs, SvmConfig(layer="fc7"), finetuned=False, force=True, runtime=META
        ),
        lambda work, inputs: run_train_bbox(work, inputs, BboxConfig(), force=True, runtime=META),
    ],
    ids=["finetune", "train-svm", "train-bbox"],
)
def test_training_stages_compute_on_the_runtime_device(split, stage) -> None:  # type: ignore[no-untyped-def]
    data, work = split
    inputs = open_split(work, data, "trainval", CLASSES)
    with pytest.raises((RuntimeError, NotImplementedError), match=NO_DATA):
        stage(work, inputs)
    assert inputs.cache.device.type == "meta"  # the stage put the cache there


def test_detect_computes_on_the_runtime_device(split) -> None:  # type: ignore[no-untyped-def]
    data, work = split
    train_inputs = open_split(work, data, "trainval", CLASSES)
    run_train_svm(work, train_inputs, SvmConfig(layer="pool5", norm_sample_windows=300), False)
    inputs = open_split(work, data, "test", CLASSES)
    with pytest.raises((RuntimeError, NotImplementedError), match=NO_DATA):
        run_detect(work, inputs, DetectConfig(), False, work.root / "x", True, runtime=META)


def test_stored_features_are_moved_to_the_device() -> None:
    class HostFeatures:  # like the R-CNN store: features read on the host
        dim = 5

        def pooled(self, image_id, boxes):  # type: ignore[no-untyped-def]
            return torch.ones(len(boxes), self.dim)

    boxes = np.zeros((3, 4), np.float32)
    got = window_features(HostFeatures(), None, "a", boxes, "pool5", META)  # type: ignore[arg-type]
    assert got.device.type == "meta" and got.shape == (3, 5)
    head = FcHead(5, 4, 3, 0.0).to("meta")
    fc7 = window_features(HostFeatures(), head, "a", boxes, "fc7", META)  # type: ignore[arg-type]
    assert fc7.device.type == "meta" and fc7.shape == (3, 4)


def test_detector_scores_where_its_features_are() -> None:
    head = FcHead(6, 4, 3, 0.0)
    scorer = LinearScorer(np.ones((2, 4), np.float32), np.zeros(2, np.float32))
    detector = WindowScorer(head.to("meta"), "fc7", scorer, 2.0, None, 1.0, DetectConfig(), META)
    assert detector.scores(torch.empty(5, 6, device="meta")).device.type == "meta"


def test_the_conv5_cache_holds_its_maps_on_its_device(split) -> None:  # type: ignore[no-untyped-def]
    data, work = split
    cache = open_split(work, data, "trainval", CLASSES).cache
    image_id = cache.image_ids[0]
    host = cache.conv5(image_id, 0)
    assert host.device.type == "cpu"
    moved = cache.to("meta").conv5(image_id, 0)
    assert moved.device.type == "meta" and moved.shape == host.shape


def test_reading_rounds_ahead_changes_no_bit(split) -> None:  # type: ignore[no-untyped-def]
    data, work = split
    inputs = open_split(work, data, "trainval", CLASSES)
    cfg = dataclasses.replace(FINETUNE, iterations=9, batch_size=8, images_per_round=3)
    table = WindowTable.build(inputs.dataset.records, inputs.proposals, len(CLASSES), cfg)
    torch.manual_seed(0)
    first = FcHead(inputs.cache.dim, 16, len(CLASSES) + 1, 0.5)
    second = copy.deepcopy(first)
    inputs.cache.keep_images(cfg.images_per_round)
    plain = train(first, inputs.cache, table, cfg, TrainState(0, 0, []), None, lambda *_: None)
    reader = RoundMaps(inputs.cache, table)
    ahead = train(
        second, inputs.cache, table, cfg, TrainState(0, 0, []), None, lambda *_: None,
        reader=reader,
    )  # fmt: skip
    assert ahead.iteration == plain.iteration == 9 and ahead.round_index == plain.round_index
    for key, value in first.state_dict().items():
        torch.testing.assert_close(second.state_dict()[key], value, rtol=0, atol=0)
    assert reader.wait_seconds >= 0.0


def test_svm_mining_on_tensors_matches_numpy() -> None:
    rng = np.random.default_rng(4)
    dim = 6
    positives = [rng.normal(1.0, 1.0, size=(20, dim)).astype(np.float32)]
    arrays = [rng.normal(-1.0, 1.0, size=(30, dim)).astype(np.float32) for _ in range(5)]
    negatives = np.ones((1, 30), bool)
    cfg = SvmConfig(C=1.0, retrain_every=40)
    on_host, stats_host = train_svms(positives, [TrainingImage(a, negatives) for a in arrays], cfg)
    images = [TrainingImage(torch.from_numpy(a), negatives) for a in arrays]
    on_device, stats_device = train_svms(positives, images, cfg)
    assert stats_device == stats_host and stats_host[0]["retrains"] >= 2
    np.testing.assert_array_equal(on_device.weights, on_host.weights)
    np.testing.assert_array_equal(on_device.bias, on_host.bias)


def test_load_window_scorer_puts_the_head_on_the_device(split) -> None:  # type: ignore[no-untyped-def]
    data, work = split
    train_inputs = open_split(work, data, "trainval", CLASSES)
    run_train_svm(work, train_inputs, SvmConfig(layer="fc7", norm_sample_windows=300), False)
    detector = load_window_scorer(
        work, open_split(work, data, "test", CLASSES), DetectConfig(), False, META
    )
    assert detector.head is not None and detector.head.fc6.weight.device.type == "meta"


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_fine_tuning_reports_its_drift(split, precision) -> None:  # type: ignore[no-untyped-def]
    data, work = split
    inputs = open_split(work, data, "trainval", CLASSES)
    runtime = Runtime(precision=precision)
    result = run_finetune(work, inputs, FINETUNE, force=True, runtime=runtime)
    saved = work.load_model("finetune", "sppdet finetune")
    assert saved["made_from"]["precision"] == precision  # not the fp32 model's fingerprint
    drift = result.drift
    assert drift is not None and 0 < drift.max_abs < 1 and drift.mean_abs <= drift.max_abs
    assert 0.5 <= drift.same_argmax <= 1


def test_mixed_precision_svms_and_detection_report_the_score_drift(split) -> None:  # type: ignore[no-untyped-def]
    data, work = split
    train_inputs = open_split(work, data, "trainval", CLASSES)
    svm = SvmConfig(layer="fc7", norm_sample_windows=300)
    mixed = run_train_svm(work, train_inputs, svm, False, True, Runtime(precision="bf16"))
    assert mixed.drift is not None and mixed.drift.max_abs > 0
    assert work.load_model("svm", "x")["made_from"]["precision"] == "bf16"
    assert run_train_svm(work, train_inputs, svm, False).drift is None  # fp32: retrained
    inputs = open_split(work, data, "test", CLASSES)
    bf16 = Runtime(precision="bf16")
    result = run_detect(work, inputs, DetectConfig(), False, work.root / "bf16", True, runtime=bf16)
    assert result.drift is not None and result.drift.max_abs > 0
    fp32 = run_detect(work, inputs, DetectConfig(), False, work.root / "fp32", True)
    assert fp32.drift is None
