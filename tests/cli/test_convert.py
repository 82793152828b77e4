"""`sppdet convert-caffe` from the command line: SPP_net-style split nets into a checkpoint that
`cache-features --weights` runs as Caffe would; bad files give one line and exit code 2."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest

from sppdet.cli.app import run_app
from sppdet.detector.data.images import read_image
from sppdet.detector.features.reader import FeatureCache, cache_info
from tests.detector.backbones.caffe.shared import (
    alexnet_net,
    caffe_forward,
    fc_layers,
    random_blobs,
    write_net,
    zf5_trunk,
)
from tests.scenes import tiny_voc_tree

for _name in ("convert", "features"):  # the commands used here (more than one: a command group)
    importlib.import_module(f"sppdet.cli.{_name}")


@pytest.fixture(scope="module")
def spp_net_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The SPP_net release's split: conv trunk and fc layers (V0), fc6 reading 12,800 values."""
    folder = tmp_path_factory.mktemp("caffe")
    trunk, head = zf5_trunk(), fc_layers("data", 12800, 16)
    blobs = random_blobs(trunk + head, seed=21)
    conv_prototxt, conv_caffemodel = write_net(folder, "Zeiler_conv5", trunk, blobs, "V0")
    fc_prototxt, fc_caffemodel = write_net(folder, "fc", head, blobs, "V0", (128, 12800, 1, 1))
    return {
        "conv.prototxt": conv_prototxt,
        "conv.caffemodel": conv_caffemodel,
        "fc.prototxt": fc_prototxt,
        "fc.caffemodel": fc_caffemodel,
    }


def convert_args(files: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [
        "convert-caffe",
        "--prototxt",
        str(files["conv.prototxt"]),
        "--caffemodel",
        str(files["conv.caffemodel"]),
        "--prototxt",
        str(files["fc.prototxt"]),
        "--caffemodel",
        str(files["fc.caffemodel"]),
        "--arch",
        "zf5",
        "--output",
        str(out),
        *extra,
    ]


def test_convert_then_cache_features_computes_caffes_conv5(
    spp_net_files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "zf5-caffe.pt"
    assert run_app(convert_args(spp_net_files, out, "--pyramid", "6,3,2,1")) == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert f"wrote {out}: zf5 trunk from Zeiler_conv5.prototxt + Zeiler_conv5.caffemodel" in printed
    assert "pyramid 1,2,3,6 (Caffe's order 6,3,2,1)" in printed
    assert f"use it with --backbone zf5 --weights {out}" in printed
    voc, work = tiny_voc_tree(tmp_path), tmp_path / "work"
    args = ["--data", str(voc), "--work", str(work), "--weights", str(out), "--device", "cpu"]
    # Scale 120 is the scenes' shorter side: the image reaches the trunk unresized.
    assert run_app(["cache-features", *args, "--scales", "120", "--dtype", "float32"]) == 0
    info = cache_info(work, "trainval")
    assert info.backbone == "zf5" and info.weights.startswith("file:")
    pre = info.preprocessing
    assert (pre["channel_order"], pre["pixel_range"], pre["mean"]) == ("BGR", 255.0, [128.0] * 3)
    trunk = zf5_trunk()
    blobs = random_blobs(trunk + fc_layers("data", 12800, 16), seed=21)
    with FeatureCache.open(work, "trainval") as cache:
        image_id = cache.image_ids[0]
        got = cache.conv5(image_id, 0).double().numpy()
    rgb = read_image(voc / "JPEGImages" / f"{image_id}.png")
    want = caffe_forward(trunk, blobs, rgb[:, :, ::-1].astype(np.float64).transpose(2, 0, 1) - 128)
    assert got.shape == want.shape
    assert np.abs(got - want).max() < 1e-5 * np.abs(want).max()


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("sppdet: error: ") and "\n" not in err
    return err


def test_truncated_caffemodel(
    spp_net_files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = dict(spp_net_files)
    data = files["conv.caffemodel"].read_bytes()
    files["conv.caffemodel"] = tmp_path / "cut.caffemodel"
    files["conv.caffemodel"].write_bytes(data[: len(data) * 2 // 3])
    assert run_app(convert_args(files, tmp_path / "x.pt", "--pyramid", "1,2,3,6")) == 2
    assert "cut.caffemodel: truncated or corrupt caffemodel" in one_line_error(capsys)
    assert not (tmp_path / "x.pt").exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00", "bad.caffemodel: not a Caffe binary net"),
        (b"PK\x03\x04\x14\x00", "bad.caffemodel: a zip archive (a PyTorch checkpoint?)"),
    ],
)
def test_wrong_magic(
    spp_net_files: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    content: bytes,
    message: str,
) -> None:
    files = dict(spp_net_files)
    files["fc.caffemodel"] = tmp_path / "bad.caffemodel"
    files["fc.caffemodel"].write_bytes(content)
    assert run_app(convert_args(files, tmp_path / "x.pt", "--pyramid", "1,2,3,6")) == 2
    assert message in one_line_error(capsys)


def test_a_layer_without_its_blobs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trunk = zf5_trunk()
    blobs = random_blobs(trunk, seed=1)
    blobs["conv4"] = blobs["conv4"][:1]
    prototxt, caffemodel = write_net(tmp_path, "zf5", trunk, blobs, "V1")
    args = ["convert-caffe", "--prototxt", str(prototxt), "--caffemodel", str(caffemodel)]
    assert run_app([*args, "--arch", "zf5", "--output", str(tmp_path / "x.pt")]) == 2
    assert "zf5.caffemodel: layer 'conv4' has 1 of its 2 blobs" in one_line_error(capsys)


def test_a_prototxt_of_another_net(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    layers = alexnet_net(8)
    prototxt, caffemodel = write_net(tmp_path, "rcnn", layers, random_blobs(layers, 1), "V1")
    args = ["convert-caffe", "--prototxt", str(prototxt), "--caffemodel", str(caffemodel)]
    assert run_app([*args, "--arch", "zf5", "--output", str(tmp_path / "x.pt")]) == 2
    err = one_line_error(capsys)
    assert "rcnn.prototxt: layer 'conv1' is a 11x11 convolution, stride 4, pad 0" in err
    assert "where ZF-5 has a 7x7 convolution, stride 2, pad 1, 96 outputs (conv1)" in err


def test_unpaired_files_and_unknown_arch(
    spp_net_files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = convert_args(spp_net_files, tmp_path / "x.pt")
    assert run_app(args[:7] + args[9:]) == 2  # without the second --caffemodel
    assert "2 prototxts and 1 caffemodels ; give them in pairs" in one_line_error(capsys)
    wrong = [a if a != "zf5" else "vgg16" for a in args]
    assert run_app(wrong) == 2
    assert "--arch vgg16: choose zf5 or alexnet" in one_line_error(capsys)
