"""Tests of ``sppdet.detector.pretrain.initial`` and of ``pretrain --weights PATH``: a run starts
from exactly the checkpoint's trunk and fc6/fc7 and keeps its preprocessing; fc6/fc7 that do not
fit start fresh with a note; another architecture, or a resume with other weights, is refused in
one line."""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path

import pytest
import torch

from sppdet.cache.fingerprint import file_hash
from sppdet.detector.backbones.checkpoint import read_checkpoint, save_backbone_checkpoint
from sppdet.detector.backbones.preprocessing import Preprocessing
from sppdet.detector.backbones.weights import load_backbone
from sppdet.detector.core.errors import SppdetError
from sppdet.detector.pretrain import train
from sppdet.detector.pretrain.initial import apply_start, checkpoint_arch, load_start
from sppdet.detector.pretrain.model import build_classifier
from sppdet.detector.pretrain.resume import state_path
from sppdet.detector.pretrain.train import pretrain
from tests.detector.pretrain.shared import CFG

pytestmark = pytest.mark.usefixtures("one_thread")

PYRAMID = (1, 2, 3, 6)
# What a Caffe-converted net expects: BGR, 0-255, a mean subtracted, no scaling.
CAFFE_LIKE = Preprocessing((101.0, 112.0, 123.0), (1.0, 1.0, 1.0), "BGR", 255.0)
ONE_EPOCH = dataclasses.replace(CFG, epochs=1)


def write_start(path: Path, seed: int, pyramid=PYRAMID, fc_dim: int = CFG.fc_dim) -> Path:
    """A backbone checkpoint of a seeded classifier's trunk and fc6/fc7 (seeds other than the
    run's, so that its weights differ from the run's own random ones)."""
    model = build_classifier("zf5", 5, pyramid, fc_dim, 0.5, seed, 0.01)
    save_backbone_checkpoint(
        path, "zf5", model.trunk, CAFFE_LIKE, model.head, pyramid, source="test"
    )
    return path


def seeded_classifier(cfg=CFG, pyramid=PYRAMID, fc_dim: int = CFG.fc_dim):
    """The classifier a random start of CFG builds (two classes)."""
    return build_classifier("zf5", 2, pyramid, fc_dim, cfg.dropout, cfg.seed, cfg.fc8_init_std)


@pytest.fixture(scope="module")
def start_file(tmp_path_factory) -> Path:
    return write_start(tmp_path_factory.mktemp("start") / "net.pt", seed=11)


@pytest.fixture(scope="module")
def started(small_tree: Path, start_file: Path, tmp_path_factory):
    """One epoch from START_FILE: the model as it entered the first epoch, the log, the run."""
    out = tmp_path_factory.mktemp("started") / "model.pt"
    entered: list[dict[str, torch.Tensor]] = []
    original = train._train_epoch

    def spy(model, *args, **kwargs):
        if not entered:  # after building, before any optimizer step
            entered.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return original(model, *args, **kwargs)

    lines: list[str] = []
    cfg = dataclasses.replace(ONE_EPOCH, weights=str(start_file))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train, "_train_epoch", spy)
        result = pretrain(small_tree, out, cfg, split="train", progress=False, log=lines.append)
    return out, entered[0], lines, result


def test_run_starts_from_the_checkpoints_weights(started, start_file: Path):
    _, entered, lines, _ = started
    record = torch.load(start_file, weights_only=True)
    for name, value in record["trunk"].items():
        assert torch.equal(entered[f"trunk.features.{name}"], value), name
    for name, value in record["head"].items():
        assert torch.equal(entered[f"head.{name}"], value), name
    # fc8 is this run's: the seeded one of a random start.
    fresh = seeded_classifier().state_dict()
    assert torch.equal(entered["head.fc8.weight"], fresh["head.fc8.weight"])
    conv1 = "trunk.features.conv1.weight"
    assert not torch.equal(entered[conv1], fresh[conv1])
    weights_id = f"file:{file_hash(start_file)}"
    assert lines[0] == f"starting from {start_file} ({weights_id}): trunk, fc6 and fc7"


def test_run_trains_from_them_with_their_preprocessing(started, start_file: Path):
    out, entered, _, result = started
    assert result.epochs_run == 1 and out.is_file()
    written = read_checkpoint(out, "zf5")
    # The net was fed what it was trained on, not inputs normalised with the tree's statistics.
    assert written["preprocessing"] == CAFFE_LIKE
    assert written["classifier"]["weights"] == f"file:{file_hash(start_file)}"
    assert f"from {start_file} (file:" in written["source"]
    moved = written["trunk"]["conv1.weight"] - entered["trunk.features.conv1.weight"]
    assert 0 < moved.abs().max() < 0.1 * entered["trunk.features.conv1.weight"].abs().max()


def test_resume_refuses_other_start_weights(
    started, start_file: Path, small_tree: Path, tmp_path: Path
):
    out, _, _, _ = started
    copy = tmp_path / "model.pt"
    longer = dataclasses.replace(CFG, epochs=2)
    other = write_start(tmp_path / "other.pt", seed=12)
    for weights in (str(other), "random"):
        shutil.copy(state_path(out), state_path(copy))
        cfg = dataclasses.replace(longer, weights=weights)
        with pytest.raises(SppdetError, match=r"other settings \(pretrain\.weights") as err:
            pretrain(small_tree, copy, cfg, split="train", progress=False)
        assert "\n" not in str(err.value)
    # The same bytes under another name are the same start: the run continues.
    moved = shutil.copy(start_file, tmp_path / "moved.pt")
    cfg = dataclasses.replace(longer, weights=str(moved))
    resumed = pretrain(small_tree, copy, cfg, split="train", progress=False)
    assert resumed.epochs_run == 1 and [h["epoch"] for h in resumed.history] == [1, 2]


def test_a_checkpoint_of_another_arch_is_refused_in_one_line(start_file: Path, small_tree: Path):
    cfg = dataclasses.replace(ONE_EPOCH, backbone="alexnet", weights=str(start_file))
    with pytest.raises(SppdetError) as err:
        pretrain(small_tree, start_file.with_name("never.pt"), cfg, split="train", progress=False)
    message = str(err.value)
    assert "\n" not in message
    assert f"{start_file}: checkpoint holds zf5 weights, not alexnet" in message
    assert "--backbone zf5" in message


def test_imagenet_is_no_start_for_pretrain():
    with pytest.raises(SppdetError, match=r"^--weights imagenet: .* ; pass --weights random"):
        load_start(dataclasses.replace(CFG, weights="imagenet"))
    assert load_start(CFG) is None


def test_checkpoint_arch_names_the_backbone_to_train(tmp_path: Path, start_file: Path):
    assert checkpoint_arch(str(start_file)) == "zf5"
    assert checkpoint_arch(None) is None and checkpoint_arch("random") is None
    trunk = build_classifier("caffe-alexnet", 2, (6,), 8, 0.5, 0, 0.01).trunk
    path = save_backbone_checkpoint(tmp_path / "caffe.pt", "caffe-alexnet", trunk, CAFFE_LIKE)
    assert checkpoint_arch(str(path)) == "caffe-alexnet"


@pytest.mark.parametrize(
    ("pyramid", "fc_dim", "why"),
    [
        (
            (1, 2),
            CFG.fc_dim,
            "its fc6 reads pyramid 1,2,3,6, this run pools 1,2 ; "
            "pass --pyramid 1,2,3,6 to use them",
        ),
        (PYRAMID, 24, "they are 16 wide, --fc-dim is 24 ; pass --fc-dim 16 to use them"),
    ],
)
def test_fc6_fc7_that_do_not_fit_start_fresh_with_a_note(
    start_file: Path, caplog: pytest.LogCaptureFixture, pyramid, fc_dim: int, why: str
):
    start = load_backbone("zf5", str(start_file))
    model = seeded_classifier(pyramid=pyramid, fc_dim=fc_dim)
    with caplog.at_level(logging.WARNING, logger="sppdet.detector.pretrain.initial"):
        took = apply_start(model, start, str(start_file))
    assert took == "trunk"
    assert [r.getMessage() for r in caplog.records] == [f"{start_file}: fc6/fc7 start fresh: {why}"]
    fresh = seeded_classifier(pyramid=pyramid, fc_dim=fc_dim).state_dict()
    record = torch.load(start_file, weights_only=True)
    state = model.state_dict()
    for name, value in fresh.items():
        if name.startswith("head."):
            assert torch.equal(state[name], value), name
    for name, value in record["trunk"].items():
        assert torch.equal(state[f"trunk.features.{name}"], value), name


def test_a_checkpoint_without_fc6_fc7_gives_the_trunk_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    trunk = build_classifier("zf5", 2, PYRAMID, 8, 0.5, 21, 0.01).trunk
    path = save_backbone_checkpoint(tmp_path / "trunk.pt", "zf5", trunk, CAFFE_LIKE)
    model = seeded_classifier()
    with caplog.at_level(logging.WARNING, logger="sppdet.detector.pretrain.initial"):
        assert apply_start(model, load_backbone("zf5", str(path)), str(path)) == "trunk"
    assert [r.getMessage() for r in caplog.records] == [
        f"{path}: fc6/fc7 start fresh: the checkpoint has none"
    ]
    assert torch.equal(model.trunk.features.conv5.weight, trunk.features.conv5.weight)
