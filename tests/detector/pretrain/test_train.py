"""Tests of ``sppdet.detector.pretrain.train``.

pretrain: data sources, crops, colour statistics, plateau drops, multi-size epochs, learning,
determinism, exact resume, the checkpoint as a backbone, and one-line errors.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import torch

from sppdet.cli.app import run_app
from sppdet.cli.main import load_commands
from sppdet.detector.backbones.checkpoint import read_checkpoint
from sppdet.detector.backbones.weights import load_backbone
from sppdet.detector.core.config import FeatureConfig
from sppdet.detector.core.errors import SppdetError
from sppdet.detector.data.datasets import load_dataset
from sppdet.detector.data.synthetic import make_synthetic_voc
from sppdet.detector.features.writer import cache_features
from sppdet.detector.pretrain.classifier import load_classifier
from sppdet.detector.pretrain.classify import classify_eval
from sppdet.detector.pretrain.resume import state_path
from sppdet.detector.pretrain.train import Plateau, pretrain
from tests.detector.pretrain.shared import CFG

# Long enough to learn red from blue: from the paper's initialisation (fc8 ~ N(0, 0.01)) the
# loss stays near ln 2 for the first dozen steps.
LEARN = dataclasses.replace(CFG, epochs=5, fc_dim=32, seed=1)

pytestmark = pytest.mark.usefixtures("one_thread")


def state_dict(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(state_path(path), weights_only=True)["model"]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture(scope="module")
def learned(tree: Path, tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("learn") / "model.pt"
    return out, pretrain(tree, out, LEARN, split="train", progress=False)


@pytest.fixture(scope="module")
def trained(small_tree: Path, tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("run") / "model.pt"
    return out, pretrain(small_tree, out, CFG, split="train", progress=False)


# --------------------------------------------------------------------------------- learning


def test_plateau_drops_twice_at_most():
    plateau = Plateau(0.01)
    values = [1.0, 0.9, 0.95, 0.91, 0.92, 0.93, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99, 1.0]
    drops = [plateau.step(v, patience=3, factor=0.1, max_drops=2) for v in values]
    assert [i for i, d in enumerate(drops) if d] == [4, 7]
    assert plateau.lr == pytest.approx(1e-4) and plateau.drops == 2
    # A step for a cycle of two sizes counts two epochs: patience 3 runs out after two cycles.
    cycles = Plateau(0.01)
    drops = [cycles.step(v, 3, 0.1, 2, epochs=2) for v in (1.0, 1.0, 1.0, 0.5, 0.6)]
    assert drops == [False, False, True, False, False]


def test_training_learns_and_alternates_sizes(learned, tree):
    out, result = learned
    assert [h["size"] for h in result.history] == [48, 64, 48, 64, 48]
    assert result.heldout == 3 and result.train_counts == {"blue": 15, "red": 14}
    assert result.history[-1]["heldout_error"] == 0.0
    report = classify_eval(out, tree, "test", workers=0, progress=False, device="cpu")
    for view in ("center", "full", "multiview"):
        assert report.results[view].top1 >= 0.9, (view, report.results[view])
        assert report.results[view].top5 is None  # two classes
    assert report.results["center"].samples == 32


def test_same_seed_same_weights_whatever_the_workers(trained, small_tree, tmp_path):
    out, _ = trained
    again = tmp_path / "again.pt"
    pretrain(small_tree, again, dataclasses.replace(CFG, workers=1), split="train", progress=False)
    assert_same_weights(state_dict(out), state_dict(again))
    assert torch.load(again, weights_only=True)["trunk"]["conv1.weight"].abs().sum() > 0


def test_resume_after_an_interrupted_epoch_gives_the_same_weights(trained, small_tree, tmp_path):
    out, result = trained
    cut = tmp_path / "cut.pt"

    def interrupt(epoch: int, step: int) -> None:
        if epoch == 1 and step == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pretrain(small_tree, cut, CFG, split="train", progress=False, on_batch=interrupt)
    assert torch.load(state_path(cut), weights_only=True)["epoch"] == 1
    assert not cut.exists()
    lines: list[str] = []
    resumed = pretrain(small_tree, cut, CFG, split="train", progress=False, log=lines.append)
    assert resumed.epochs_run == 1 and lines[0].startswith("resuming")
    assert_same_weights(state_dict(out), state_dict(cut))
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in result.history]


def test_resume_refuses_other_settings(trained, small_tree, tmp_path):
    out, _ = trained
    copy = tmp_path / "model.pt"
    shutil.copy(state_path(out), state_path(copy))
    with pytest.raises(SppdetError, match=r"other settings .*base_lr.*--no-resume"):
        pretrain(
            small_tree, copy, dataclasses.replace(CFG, base_lr=0.02), split="train", progress=False
        )
    # --no-resume starts over with the new settings.
    fresh = pretrain(
        small_tree,
        copy,
        dataclasses.replace(CFG, base_lr=0.02, epochs=1),
        split="train",
        resume=False,
        progress=False,
    )
    assert fresh.epochs_run == 1 and [h["lr"] for h in fresh.history] == [0.02]
    shutil.copy(state_path(out), state_path(copy))
    # More epochs continue the same run.
    longer = pretrain(
        small_tree, copy, dataclasses.replace(CFG, epochs=3), split="train", progress=False
    )
    assert longer.epochs_run == 1 and [h["epoch"] for h in longer.history] == [1, 2, 3]


# ------------------------------------------------------------------------------- checkpoint


def test_checkpoint_is_a_backbone_for_cache_features(trained, tmp_path):
    out, _ = trained
    record = read_checkpoint(out, "zf5")
    model = state_dict(out)
    backbone = load_backbone("zf5", str(out))
    for name, value in backbone.trunk.features.state_dict().items():
        assert torch.equal(value, model[f"trunk.features.{name}"])
    assert backbone.head_pyramid == (1, 2, 3, 6)
    head = backbone.head_state((1, 2, 3, 6))
    assert set(head) == {"fc6.weight", "fc6.bias", "fc7.weight", "fc7.bias"}
    assert torch.equal(head["fc6.weight"], model["head.fc6.weight"])
    assert head["fc6.weight"].shape == (16, 256 * 50)
    assert backbone.preprocessing == record["preprocessing"]
    assert backbone.preprocessing.channel_order == "BGR"
    entry = record["classifier"]
    assert entry["classes"] == ["blue", "red"] and entry["sizes"] == [48, 64]
    assert torch.equal(entry["fc8.weight"], model["head.fc8.weight"])
    assert load_classifier(out).classes == ("blue", "red")
    # cache-features runs the trained trunk.
    voc = make_synthetic_voc(tmp_path / "voc", num_images=2, image_size=(64, 80), seed=1)
    config = FeatureConfig(weights=str(out), scales=(64,), device="cpu", shard_size=2)
    stats = cache_features(load_dataset(voc, "trainval"), tmp_path / "work", config, progress=False)
    assert stats.computed == 1


def test_cli_pretrain_and_classify_eval(small_tree, tmp_path, capsys):
    load_commands()
    out = tmp_path / "cli.pt"
    code = run_app(
        [
            "pretrain",
            "--backbone",
            "zf5",
            "--data",
            str(small_tree),
            "--split",
            "train",
            "--sizes",
            "48",
            "--epochs",
            "1",
            "--fc-dim",
            "8",
            "--out",
            str(out),
            "--workers",
            "0",
            "--batch-size",
            "8",
            "--seed",
            "1",
        ]
    )
    assert code == 0 and out.is_file() and state_path(out).is_file()
    assert "trained 1 epochs" in capsys.readouterr().err
    report = tmp_path / "eval.json"
    code = run_app(
        [
            "classify-eval",
            "--ckpt",
            str(out),
            "--data",
            str(small_tree),
            "--workers",
            "0",
            "--split",
            "train",
            "--report",
            str(report),
            "--json",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert '"multiview_count": 10' in printed and report.is_file()
    assert run_app(["pretrain", "--data", str(small_tree), "--backbone", "zf9"]) == 2
    assert "unknown backbone 'zf9'" in capsys.readouterr().err
