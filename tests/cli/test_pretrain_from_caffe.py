"""`sppdet convert-caffe` then `sppdet pretrain --weights converted.pt`: training continues from
the Caffe net's weights, fed what Caffe fed it (BGR, 0-255, mean subtracted), with --backbone
taken from the checkpoint; a contradicting --backbone is one line and exit code 2."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest
import torch

from sppdet.cli.app import run_app
from sppdet.detector.backbones.checkpoint import read_checkpoint
from sppdet.detector.pretrain.model import build_classifier
from tests.detector.backbones.caffe.shared import (
    alexnet_net,
    fc_layers,
    random_blobs,
    write_net,
    zf5_trunk,
)
from tests.detector.pretrain.shared import make_color_tree

for _name in ("convert", "pretrain"):  # the commands used here
    importlib.import_module(f"sppdet.cli.{_name}")

WIDTH = 16  # fc6/fc7 outputs of the Caffe nets
# Small enough that one epoch leaves every weight within a hair of where it started, so the
# trained checkpoint shows which weights the run started from.
TINY_LR = "1e-7"


@pytest.fixture(scope="module")
def color_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_color_tree(tmp_path_factory.mktemp("tree"), per_class=6, splits=("train",))


def pretrain_args(tree: Path, weights: Path, out: Path, *extra: str) -> list[str]:
    return [
        "pretrain",
        "--data",
        str(tree),
        "--split",
        "train",
        "--weights",
        str(weights),
        "--sizes",
        "64",
        "--epochs",
        "1",
        "--fc-dim",
        str(WIDTH),
        "--lr",
        TINY_LR,
        "--batch-size",
        "8",
        "--loader-threads",
        "0",
        "--device",
        "cpu",
        "--output",
        str(out),
        *extra,
    ]


def assert_near(found: torch.Tensor, caffe: np.ndarray) -> None:
    """FOUND is the Caffe blob, moved by at most 1e-5 of the blob's scale."""
    expected = torch.from_numpy(caffe)
    assert found.shape == expected.shape
    assert (found - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_pretrain_continues_from_a_converted_spp_net(
    color_tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trunk, head = zf5_trunk(), fc_layers("data", 12800, WIDTH)
    blobs = random_blobs(trunk + head, seed=31)
    conv = write_net(tmp_path, "Zeiler_conv5", trunk, blobs, "V0")
    fc = write_net(tmp_path, "fc", head, blobs, "V0", (128, 12800, 1, 1))
    converted = tmp_path / "converted.pt"
    args = ["convert-caffe", "--prototxt", str(conv[0]), "--caffemodel", str(conv[1])]
    args += ["--prototxt", str(fc[0]), "--caffemodel", str(fc[1])]
    args += ["--arch", "zf5", "--output", str(converted)]
    assert run_app([*args, "--pyramid", "6,3,2,1"]) == 0
    capsys.readouterr()

    out = tmp_path / "continued.pt"
    assert run_app(pretrain_args(color_tree, converted, out)) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert f"starting from {converted} (file:" in err and "): trunk, fc6 and fc7" in err
    assert "trained 1 epochs" in err
    written = read_checkpoint(out, "zf5")
    for layer in ("conv1", "conv3", "conv5"):
        assert_near(written["trunk"][f"{layer}.weight"], blobs[layer][0])
        assert_near(written["trunk"][f"{layer}.bias"], blobs[layer][1])
    assert_near(written["head"]["fc7.weight"], blobs["fc7"][0])
    assert_near(written["head"]["fc6.bias"], blobs["fc6"][1])
    # The seeded random start of the same command is nowhere near those weights.
    seeded = build_classifier("zf5", 2, (1, 2, 3, 6), WIDTH, 0.5, 0, 0.01).trunk.features
    assert not torch.allclose(seeded.conv1.weight, torch.from_numpy(blobs["conv1"][0]), atol=1e-2)
    # The net was fed what SPP_net fed it: BGR, 0-255, minus 128.
    pre = written["preprocessing"]
    assert (pre.channel_order, pre.pixel_range, pre.mean, pre.std) == (
        "BGR",
        255.0,
        (128.0,) * 3,
        (1.0,) * 3,
    )
    assert written["classifier"]["classes"] == ["blue", "red"]


def test_pretrain_takes_the_backbone_from_a_converted_rcnn_net(
    color_tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    layers = alexnet_net(WIDTH)
    blobs = random_blobs(layers, seed=32)
    prototxt, caffemodel = write_net(tmp_path, "rcnn", layers, blobs, "V1", (1, 3, 227, 227))
    converted = tmp_path / "caffenet.pt"
    args = ["convert-caffe", "--prototxt", str(prototxt), "--caffemodel", str(caffemodel)]
    assert run_app([*args, "--arch", "alexnet", "--output", str(converted)]) == 0
    capsys.readouterr()

    out = tmp_path / "continued.pt"
    assert run_app(pretrain_args(color_tree, converted, out, "--backbone", "zf5")) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "checkpoint holds caffe-alexnet weights, not zf5" in err
    assert not out.exists()

    assert run_app(pretrain_args(color_tree, converted, out, "--pyramid", "6")) == 0
    assert "): trunk, fc6 and fc7" in capsys.readouterr().err
    written = read_checkpoint(out)
    assert written["arch"] == "caffe-alexnet" and written["head_pyramid"] == [6]
    assert_near(written["trunk"]["conv2.weight"], blobs["conv2"][0])
    assert_near(written["head"]["fc6.weight"], blobs["fc6"][0])
