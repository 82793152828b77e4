"""``detect --fc-rank`` / ``export --fc-rank``: fc6 and fc7 truncated once, kept in WORK/models,
used by the detect stage, named in its fingerprint, carried into the model file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sppdet.cache.workdir import WorkDir
from sppdet.cli.app import run_app
from sppdet.cli.main import load_commands
from sppdet.detector.core.config import DetectConfig
from sppdet.detector.core.errors import SppdetError
from sppdet.detector.detection.scorer import (
    compressed_head,
    detector_fingerprint,
    head_source,
    load_window_scorer,
    model_with_fc_rank,
)
from sppdet.detector.detection.stage import run_detect
from sppdet.detector.heads.fc import FcHead
from sppdet.detector.heads.lowrank import LowRankLinear
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
    same = load_window_scorer(work, inputs, DetectConfig(), False, fc_rank=(HIDDEN, HIDDEN))
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
    first = compressed_head(work, head, source, (6, 5))
    assert work.model("fc-rank-6-5").is_file()

    def recompute(self: FcHead, ranks: tuple[int, int]) -> FcHead:
        raise AssertionError("the kept head should be read, not recomputed")

    monkeypatch.setattr(FcHead, "compressed", recompute)
    again = load_window_scorer(work, inputs, DetectConfig(), False, fc_rank=(6, 5)).head
    assert again is not None and isinstance(again.fc6, LowRankLinear)
    for key, value in first.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key
    other = {**source, "head": "another fine-tuning"}  # a retrained head: computed again
    with pytest.raises(AssertionError, match="recomputed"):
        compressed_head(work, head, other, (6, 5))
    with pytest.raises(SppdetError, match="these SVMs read pool5"):
        compressed_head(work, None, source, (6, 5))


def test_detect_with_ranks_writes_apart_and_names_them(trained) -> None:  # type: ignore[no-untyped-def]
    data, work = trained
    inputs = open_split(work, data, "test", CLASSES)
    cfg = DetectConfig()
    result = run_detect(work, inputs, cfg, bbox=True, data=data, fc_rank=(4, 3))
    assert result.out == work.detections("test-fc4x3")
    assert (result.out / "comp4_det_test_circle.txt").is_file()
    assert work.recorded("detect", "test-fc4x3")["split"] == "test"
    assert detector_fingerprint(work, cfg, True, fc_rank=(4, 3))["fc_rank"] == [4, 3]
    assert "fc_rank" not in detector_fingerprint(work, cfg, True)  # old candidates stay valid


def test_model_file_carries_the_truncated_head(trained) -> None:  # type: ignore[no-untyped-def]
    _, work = trained
    model = model_with_fc_rank(work, model_from_work(work), (4, 3))
    assert model["fc_rank"] == [4, 3]
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
