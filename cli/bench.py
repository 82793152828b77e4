"""``sppdet bench``: SPP against R-CNN with the same trunk, timed part by part in one process."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

from sppdet.cache.atomic import write_json
from sppdet.cli.app import app
from sppdet.cli.options import (
    BackboneOption,
    ClassesOption,
    DataOption,
    DeviceOption,
    FcRankOption,
    PresetOption,
    WeightsOption,
    fc_rank,
    int_list,
)
from sppdet.detector.core.config import BenchConfig, ProposalConfig, override, preset

if TYPE_CHECKING:  # the bench imports torch: only the command that runs it imports it
    from sppdet.detector.bench import BenchReport

log = logging.getLogger(__name__)

PART_LABELS = {
    "proposals": "proposals",
    "rcnn_conv": "R-CNN conv (warp + conv1-5 + pool5)",
    "rcnn_fc": "R-CNN fc6-fc7",
    "spp_conv_1": "SPP conv, 1 scale",
    "spp_pool_1": "SPP pooling, 1 scale",
    "spp_conv_5": "SPP conv, 5 scales",
    "spp_pool_5": "SPP pooling, 5 scales",
    "spp_fc": "SPP fc6-fc7",
    "svm": "SVM scoring",
    "nms": "NMS",
}


def _scales(scales: tuple[int, ...]) -> str:
    return ",".join(map(str, scales))


@app.command("bench")
def bench_command(
    data: Path = DataOption,
    split: str = typer.Option("test", "--split", help="Split whose first images are timed."),
    images: int = typer.Option(None, "--num-images", help="Images to time.", show_default="3"),
    backbone: str = BackboneOption,
    weights: str = WeightsOption,
    device: str = DeviceOption,
    precision: str = typer.Option(
        "fp32", "--precision", help="fp32, or bf16/fp16 autocast (the score change is reported)."
    ),
    windows: int = typer.Option(
        None,
        "--windows",
        help="Windows per image (proposals, topped up).",
        show_default=str(BenchConfig.windows),
    ),
    method: str = typer.Option(
        None, "--method", help="Proposal method timed and used.", show_default=ProposalConfig.method
    ),
    one_scale: str = typer.Option(
        None,
        "--one-scale",
        help="The 1-scale setting.",
        show_default=_scales(BenchConfig.one_scale),
    ),
    five_scales: str = typer.Option(
        None,
        "--five-scales",
        help="The 5-scale setting.",
        show_default=_scales(BenchConfig.five_scales),
    ),
    ranks: str = FcRankOption,
    classes: str = ClassesOption,
    preset_name: str = PresetOption,
    out: Path = typer.Option(
        Path("bench.json"), "--report", help="Where to write the JSON report."
    ),
) -> None:
    """Per image: proposals, R-CNN conv+fc for the windows, SPP conv at 1 and 5 scales, pooling,
    fc6-fc7, SVM scoring, NMS, and the speed-ups, on the same images, windows and weights."""
    from sppdet.detector.backbones.weights import weights_kind
    from sppdet.detector.bench import run_bench
    from sppdet.detector.data.datasets import load_dataset, parse_classes
    from sppdet.detector.features.writer import random_weights_warning

    cfg = preset(preset_name)
    features = override(cfg.features, backbone=backbone, weights=weights, device=device)
    cfg = dataclasses.replace(
        cfg,
        proposals=override(cfg.proposals, method=method),
        bench=override(
            cfg.bench,
            images=images,
            windows=windows,
            one_scale=int_list(one_scale, "--one-scale"),
            five_scales=int_list(five_scales, "--five-scales"),
        ),
    )
    dataset = load_dataset(data, split, parse_classes(classes))
    if weights_kind(features.weights) == "random":  # the timings hold; the scores mean little
        log.warning(random_weights_warning("bench"))
    report = run_bench(dataset, features, cfg, precision, fc_rank=fc_rank(ranks))
    write_json(out, report.to_json())
    print_report(report, Console())
    Console(stderr=True).print(f"wrote {out}")


def print_report(report: BenchReport, console: Console) -> None:
    from sppdet.detector.bench import PARTS

    table = Table(
        title=f"{report.backbone} ({report.weights}), {report.device_name}, "
        f"{report.precision}, {report.windows} windows/image, "
        f"{len(report.images)} images, pooling {'+'.join(report.pooling)}"
    )
    table.add_column("part")
    table.add_column("s/image", justify="right")
    table.add_column("G multiply-adds", justify="right")
    table.add_column("GFLOP/s", justify="right")
    gflops = report.gflops
    for part in PARTS:
        macs = report.macs.get(part, 0.0)
        table.add_row(
            PART_LABELS[part],
            f"{report.per_image[part]:.4f}",
            f"{macs / 1e9:.2f}" if macs else "-",
            f"{gflops[part]:.1f}" if part in gflops else "-",
        )
    console.print(table)
    for line in ratio_lines(report):
        console.print(line)
    check = report.check
    if check is not None:
        console.print(
            f"{report.precision} against fp32: SVM scores move by at most "
            f"{check.spp_max_abs_score_diff:.4g} (SPP; mean "
            f"{check.spp_mean_abs_score_diff:.3g}, score std {check.score_std:.3g}) and "
            f"{check.rcnn_max_abs_score_diff:.4g} "
            f"(R-CNN); detections after NMS {100 * check.same_detections:.1f}% the same"
        )


SHARE_LABELS = {"conv": "conv", "pool": "pooling", "fc": "fc6-fc7", "svm": "SVM", "nms": "NMS"}


def ratio_lines(report: BenchReport) -> list[str]:
    """Per setting: each speed-up, its work ratio (multiply-adds), the ratio the multiply-adds
    set at SPP's measured rates (``bench.bounds``) and the SPP part that takes most of the time
    it divides by; then detection's seconds per image without proposals."""
    from sppdet.detector.bench import TAGS, spp_shares

    lines = []
    for tag in TAGS:
        parts = []
        for side, name in (("conv", "conv"), ("conv_fc", "conv+fc")):
            key = f"{side}_{tag}_scale"
            shares = spp_shares(report.per_image, side, tag)
            top = max(shares, key=lambda part: shares[part])
            label = SHARE_LABELS[top.split("_")[1] if top.startswith("spp_") else top]
            parts.append(
                f"{name} {report.speedup[key]:.1f}x (work ratio {report.work_ratio[key]:.1f}x; "
                f"{report.bound[key]:.1f}x at SPP's measured GFLOP/s, measured / bound "
                f"{report.speedup[key] / report.bound[key]:.2f}; bound by {label}: "
                f"{100 * shares[top]:.0f}% of SPP's time)"
            )
        scales = "1 scale" if tag == "1" else "5 scales"
        lines.append(f"speed-up over R-CNN, SPP {scales}: {'; '.join(parts)}")
    rank = "full fc6/fc7" if report.fc_rank is None else f"fc6/fc7 ranks {report.fc_rank}"
    lines.append(
        f"detect without proposals (SPP conv, pooling, fc6-fc7, SVMs, NMS; {rank}): "
        f"{report.detect['1']:.3f} s/image at 1 scale, {report.detect['5']:.3f} at 5 scales"
    )
    return lines
