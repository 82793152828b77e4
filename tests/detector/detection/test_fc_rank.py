"""``detect --fc-rank`` / ``export --fc-rank``: fc6 and fc7 at low rank (fitted to their responses
on the training split's windows, or the weights' truncated SVD), computed once, kept in
WORK/models, used by the detect stage, named in its fingerprint, carried into the model file."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from sppdet.cache.workdir import WorkDir
from sppdet.cli.app import run_app
from sppdet.cli.main import load_commands
from sppdet.detector.core.config import FC_RANK_FIT_SEED, FC_RANK_FIT_WINDOWS, DetectConfig
from sppdet.detector.core.errors import SppdetError
from sppdet.detector.detection.fc_rank import (
    compressed_head,
    fit_split,
    fit_windows,
    head_source,
    model_file,
    svm_split,
)
from sppdet.detector.detection.scorer import (
    detector_fingerprint,
    load_window_scorer,
    model_with_fc_rank,
)
from sppdet.detector.detection.stage import run_detect
from sppdet.detector.heads.fc import FcHead
from sppdet.detector.heads.lowrank import FcRank, LowRankLinear, fitted_to_responses
from sppdet.detector.inference.model import fc_head_from_record, model_from_work
from sppdet.detector.training.inputs import open_split
from sppdet.detector.training.svm import load_svm
from tests.detector.inference.shared import CLASSES, train_tiny

load_commands()

HIDDEN = 32  # tiny_config's fc_dim


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, WorkDir]:
    return train_tiny(tmp_path_factory.mktemp("fc_rank"))


def test_full_rank_scores_as_the_trained_head(trained) -> None:  # type: ignore[no-untyped-def]
    data, work = trained
    inputs = open_split(work, data, "test", CLASSES)
    full = load_window_scorer(work, inputs, DetectConfig(), bbox=False)
    full_rank = FcRank((HIDDEN, HIDDEN), "weights")
    same = load_window_scorer(work, inputs, DetectConfig(), False, fc_rank=full_rank)
    assert same.head is not None and same.head.fc_rank == (HIDDEN, HIDDEN)
    record = inputs.dataset.records[0]
    pooled = inputs.cache.pooled(record.image_id, inputs.proposals(record.image_id))
    with torch.no_grad():
        want, got = full.scores(pooled), same.scores(pooled)
    # Two float32 products per layer instead of one, the factors rounded to float32: the worst
    # case is (12,800 + 32 + 3) u times the magnitudes (test_fc_lowrank's bound), rounding
    # errors that cancel in practice (about 2 eps of the largest score here). 1000 eps leaves
    # room for other data; a wrong factor would move the scores by their own size.
    eps = torch.finfo(torch.float32).eps
    torch.testing.assert_close(got, want, rtol=0, atol=1000 * eps * float(want.abs().max()))


def test_truncated_head_is_computed_once_and_kept(trained, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    data, work = trained
    inputs = open_split(work, data, "test", CLASSES)
    _, svm = load_svm(work, inputs)
    source = head_source(work, svm["made_from"], "svm")
    head = load_window_scorer(work, inputs, DetectConfig(), False).head
    assert head is not None
    compression = FcRank((6, 5))
    first = compressed_head(work, head, source, compression, "trainval")
    assert work.model("fc-rank-6-5").is_file()
    weights = compressed_head(work, head, source, FcRank((6, 5), "weights"))
    assert work.model("fc-rank-6-5-weights").is_file()  # each fit kept apart

    def recompute(self: FcHead, ranks: tuple[int, int], windows: object = None) -> FcHead:
        raise AssertionError("the kept head should be read, not recomputed")

    monkeypatch.setattr(FcHead, "compressed", recompute)
    again = load_window_scorer(work, inputs, DetectConfig(), False, fc_rank=compression).head
    assert again is not None and isinstance(again.fc6, LowRankLinear)
    for key, value in first.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key
    assert not torch.equal(weights.fc6.first.weight, first.fc6.first.weight)
    other = {**source, "head": "another fine-tuning"}  # a retrained head: computed again
    with pytest.raises(AssertionError, match="recomputed"):
        compressed_head(work, head, other, compression, "trainval")
    with pytest.raises(SppdetError, match="these SVMs read pool5"):
        compressed_head(work, None, source, compression, "trainval")


def test_detect_with_ranks_writes_apart_and_names_them(trained) -> None:  # type: ignore[no-untyped-def]
    data, work = trained
    inputs = open_split(work, data, "test", CLASSES)
    cfg = DetectConfig()
    result = run_detect(work, inputs, cfg, bbox=True, data=data, fc_rank=FcRank((4, 3)))
    assert result.out == work.detections("test-fc4x3")
    assert (result.out / "comp4_det_test_circle.txt").is_file()
    assert work.recorded("detect", "test-fc4x3")["split"] == "test"
    made = detector_fingerprint(work, cfg, True, fc_rank=FcRank((4, 3), "weights"))
    assert (made["fc_rank"], made["fc_rank_fit"]) == ([4, 3], "weights")
    assert "fc_rank" not in detector_fingerprint(work, cfg, True)  # old candidates stay valid
    weights = run_detect(work, inputs, cfg, True, data=data, fc_rank=FcRank((4, 3), "weights"))
    assert weights.out == work.detections("test-fc4x3-weights")


def test_model_file_carries_the_truncated_head(trained) -> None:  # type: ignore[no-untyped-def]
    _, work = trained
    model = model_with_fc_rank(work, model_from_work(work), FcRank((4, 3)))
    assert (model["fc_rank"], model["fc_rank_fit"]) == ([4, 3], "responses")
    assert model["fingerprint"] != model_from_work(work)["fingerprint"]
    head = fc_head_from_record(model["head"], "model")
    assert head is not None and head.fc_rank == (4, 3)


def test_cli_refuses_malformed_ranks(trained, capsys) -> None:  # type: ignore[no-untyped-def]
    data, work = trained
    args = ["detect", "--data", str(data), "--work", str(work.root)]
    assert run_app([*args, "--fc-rank", "8"]) == 2
    assert "--fc-rank '8': give two ranks" in capsys.readouterr().err
    assert run_app([*args, "--fc-rank", "64,4"]) == 2
    assert f"--fc-rank 64 for fc6 ({HIDDEN} x 12800): out of range" in capsys.readouterr().err
    assert run_app([*args, "--fc-rank", "4,3", "--fc-rank-fit", "pca"]) == 2
    assert "--fc-rank-fit 'pca': choose one of responses, weights" in capsys.readouterr().err


def test_responses_are_fitted_on_the_svms_training_windows(trained) -> None:  # type: ignore[no-untyped-def]
    data, work = trained
    inputs = open_split(work, data, "test", CLASSES)
    _, svm = load_svm(work, inputs)
    assert svm_split(work, svm) == "trainval"  # recorded by train-svm
    batches, sample = fit_windows(work, "trainval", 50, seed=0)
    pooled = torch.cat(list(batches()))
    assert torch.equal(pooled, torch.cat(list(batches())))  # the same windows at every call
    assert sample["split"] == "trainval" and 50 <= len(pooled) <= 50 + 8  # rounded up per image
    head = load_window_scorer(work, inputs, DetectConfig(), False).head
    assert head is not None
    # The kept fc6 is the fit to fc6's responses on that split's sampled windows.
    small = compressed_head(
        work, head, head_source(work, svm["made_from"], "svm"), FcRank((7, 6)), "trainval"
    )
    batches, _ = fit_windows(work, "trainval", FC_RANK_FIT_WINDOWS, FC_RANK_FIT_SEED)
    with torch.no_grad():
        want = fitted_to_responses(head.fc6, 7, [b * head.input_scale for b in batches()])
    for key, value in want.state_dict().items():
        torch.testing.assert_close(small.fc6.state_dict()[key], value)
    assert model_file(FcRank((7, 6))) == "fc-rank-7-6"


def test_svms_from_before_the_split_was_recorded_find_it_by_their_inputs(trained) -> None:  # type: ignore[no-untyped-def]
    data, work = trained
    _, svm = load_svm(work, open_split(work, data, "test", CLASSES))
    old = {k: v for k, v in svm.items() if k != "split"}  # as train-svm saved it before
    assert svm_split(work, old) == "trainval"  # the split whose inputs made them
    other = {**old, "made_from": {**old["made_from"], "inputs": "another split"}}
    with pytest.raises(SppdetError, match="does not record its training split"):
        svm_split(work, other)
    assert fit_split(work, other, FcRank((4, 3), "weights")) is None  # the weights need none
    with pytest.raises(SppdetError, match="does not record its training split"):
        fit_split(work, other, FcRank((4, 3)))


def test_responses_fit_needs_spp_features(trained) -> None:  # type: ignore[no-untyped-def]
    data, work = trained
    inputs = open_split(work, data, "test", CLASSES)
    rcnn = dataclasses.replace(inputs, cache=SimpleNamespace(source="rcnn"))
    with pytest.raises(SppdetError, match="add --fc-rank-fit weights"):
        load_window_scorer(work, rcnn, DetectConfig(), False, fc_rank=FcRank((4, 3)))
