"""``sppdet bench``: SPP against R-CNN with the same trunk, timed part by part in one process."""

from __future__ import annotations

import dataclasses
from pathlib import Path

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
    PresetOption,
    WeightsOption,
    int_list,
)
from sppdet.detector.bench import PARTS, BenchReport, run_bench
from sppdet.detector.core.config import BenchConfig, ProposalConfig, override, preset
from sppdet.detector.data.datasets import load_dataset, parse_classes

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
    images: int = typer.Option(None, "--images", help="Images to time.", show_default="3"),
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
    classes: str = ClassesOption,
    preset_name: str = PresetOption,
    out: Path = typer.Option(Path("bench.json"), "--out", help="Where to write the JSON report."),
) -> None:
    """Per image: proposals, R-CNN conv+fc for the windows, SPP conv at 1 and 5 scales, pooling,
    fc6-fc7, SVM scoring, NMS, and the speed-ups, on the same images, windows and weights."""
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
    report = run_bench(dataset, features, cfg, precision)
    write_json(out, report.to_json())
    print_report(report, Console())
    Console(stderr=True).print(f"wrote {out}")


def print_report(report: BenchReport, console: Console) -> None:
    table = Table(
        title=f"{report.backbone} ({report.weights}), {report.device_name}, "
        f"{report.precision}, {report.windows} windows/image, "
        f"{len(report.images)} images, pooling {'+'.join(report.pooling)}"
    )
    table.add_column("part")
    table.add_column("s/image", justify="right")
    for part in PARTS:
        table.add_row(PART_LABELS[part], f"{report.per_image[part]:.4f}")
    console.print(table)
    ratios = report.speedup
    for tag, name in (("1", "1 scale"), ("5", "5 scales")):
        console.print(
            f"speed-up over R-CNN, SPP {name}: conv {ratios[f'conv_{tag}_scale']:.1f}x, "
            f"conv+fc {ratios[f'conv_fc_{tag}_scale']:.1f}x"
        )
    check = report.check
    if check is not None:
        console.print(
            f"{report.precision} against fp32: SVM scores move by at most "
            f"{check.spp_max_abs_score_diff:.4g} (SPP; mean "
            f"{check.spp_mean_abs_score_diff:.3g}, score std {check.score_std:.3g}) and "
            f"{check.rcnn_max_abs_score_diff:.4g} "
            f"(R-CNN); detections after NMS {100 * check.same_detections:.1f}% the same"
        )
