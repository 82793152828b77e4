"""``sppdet convert-caffe``: the authors' Caffe models (SPP_net's ZF-5, R-CNN's AlexNet) as a
backbone checkpoint that ``--weights`` takes."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from sppdet.cli.app import app
from sppdet.cli.options import int_list
from sppdet.detector.core.errors import SppdetError

if TYPE_CHECKING:
    from sppdet.detector.backbones.caffe.convert import Conversion


@app.command("convert-caffe")
def convert_caffe_command(
    prototxt: list[Path] = typer.Option(
        ...,
        "--prototxt",
        help="A net definition (V0, V1 or V2 layers); repeat it, each followed by its "
        "--caffemodel, when the trunk and the fc layers are separate nets (SPP_net's are).",
    ),
    caffemodel: list[Path] = typer.Option(
        ..., "--caffemodel", help="The trained weights of the --prototxt before it."
    ),
    arch: str = typer.Option(
        ...,
        "--arch",
        help="zf5 (SPP_net's Zeiler_conv5) or alexnet (R-CNN's CaffeNet; written as the "
        "caffe-alexnet backbone).",
    ),
    out: Path = typer.Option(..., "--output", help="The backbone checkpoint file to write."),
    mean: str = typer.Option(
        None,
        "--mean",
        help="What the net subtracts from its BGR 0-255 input: one value, B,G,R, or a mean "
        "image (.binaryproto, .npy, .mat), reduced to its per-channel mean.",
        show_default="zf5: 128 (SPP_net); alexnet: the ILSVRC 2012 mean image's",
    ),
    pyramid: str = typer.Option(
        None,
        "--pyramid",
        help="Levels, in their order, of the pooled vector an fc-only net's fc6 reads (SPP_net: "
        "spm_divs in spp_config.m); a net with its pooling layers says it itself.",
    ),
) -> None:
    """Convert Caffe nets (prototxt + caffemodel) into a backbone checkpoint."""
    if len(prototxt) != len(caffemodel):
        raise SppdetError(
            f"--prototxt/--caffemodel: {len(prototxt)} prototxts and {len(caffemodel)} "
            "caffemodels ; give them in pairs, each prototxt with its caffemodel"
        )
    from sppdet.detector.backbones.caffe.convert import CAFFE_ARCHS, NetFiles, convert_caffe

    if arch not in CAFFE_ARCHS:
        raise SppdetError(f"--arch {arch}: choose {' or '.join(CAFFE_ARCHS)}")
    nets = [NetFiles(p, c) for p, c in zip(prototxt, caffemodel, strict=True)]
    result = convert_caffe(nets, arch, out, mean, int_list(pyramid, "--pyramid"))
    _print_conversion(result)


def _print_conversion(result: Conversion) -> None:
    lines = [f"wrote {result.out}: {result.arch} trunk from {result.trunk_from.describe()}"]
    if result.head_from is not None and result.pyramid is not None:
        caffe = ",".join(map(str, result.caffe_levels or ()))
        lines.append(
            f"fc6/fc7 ({result.fc_dim} wide) from {result.head_from.describe()}, pyramid "
            f"{','.join(map(str, result.pyramid))} (Caffe's order {caffe})"
        )
    else:
        lines.append("no fc6/fc7: fine-tuning starts them from scratch")
    lines.append(f"input: BGR 0-255 minus {result.mean_from}")
    lines.append(f"use it with --backbone {result.arch} --weights {result.out}")
    for line in lines:
        typer.echo(line)
