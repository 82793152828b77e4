"""``sppdet pretrain`` and ``sppdet classify-eval``: an SPP classifier as a detection backbone."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

from sppdet.cache.atomic import write_json
from sppdet.cli.app import app
from sppdet.cli.options import BackboneOption, ClassesOption, DeviceOption, PresetOption, int_list
from sppdet.detector.core.config import override, preset

if TYPE_CHECKING:  # pretraining imports torch: only the commands that run it import it
    from sppdet.detector.pretrain.classify import ClassifyEvaluation
    from sppdet.detector.pretrain.train import PretrainResult

SourceOption = typer.Option(
    ...,
    "--data",
    help="An image-folder tree (one sub-folder of images per class; DATA/<split>/ when it "
    "exists), or a detection dataset (VOC root or COCO .json) whose object crops and "
    "background crops (IoU < 0.3 with every object) make K+1 classes.",
)
SPLIT_HELP = "VOC split, or the sub-folder of an image-folder tree."
SizesOption = typer.Option(
    None,
    "--sizes",
    help="Input sizes, one per epoch in turn: 224 (single-size) or 180,224 (multi-size).",
    show_default="180,224",
)
EpochsOption = typer.Option(
    None, "--epochs", help="Epochs in all.", show_default="30; quick-cpu preset: 8"
)
PyramidOption = typer.Option(
    None, "--pyramid", help="SPP levels after conv5.", show_default="1,2,3,6"
)
FcDimOption = typer.Option(
    None,
    "--fc-dim",
    help="Width of fc6 and fc7 (the paper's 4096).",
    show_default="4096; quick-cpu preset: 1024",
)
StartWeightsOption = typer.Option(
    None,
    "--weights",
    help="random, or PATH to a backbone checkpoint (convert-caffe's, an earlier pretrain's, a "
    "torchvision state dict) to continue training: its trunk, its fc6/fc7 when --pyramid and "
    "--fc-dim match them, and its preprocessing; --backbone defaults to the checkpoint's.",
    show_default="random",
)
OutOption = typer.Option(
    None,
    "--output",
    help="Checkpoint file to write (the resume state goes beside it as NAME.resume.pt).",
    show_default="pretrain-<backbone>.pt",
)
LOADER_THREADS_HELP = "Image-loading threads (no effect on the result)."
WorkersOption = typer.Option(None, "--loader-threads", help=LOADER_THREADS_HELP, show_default="2")
SizeOption = typer.Option(
    None, "--size", help="Centre-crop and view side.", show_default="largest training size"
)
FullSideOption = typer.Option(
    None,
    "--full-side",
    help="Shorter side of the full-image view.",
    show_default="size / crop fraction (256 for 224)",
)
ViewScalesOption = typer.Option(
    None,
    "--view-scales",
    help="Shorter sides of the images the multi-view windows lie on.",
    show_default="size / crop fraction",
)


@app.command("pretrain")
def pretrain_command(
    data: Path = SourceOption,
    backbone: str = BackboneOption,
    weights: str = StartWeightsOption,
    sizes: str = SizesOption,
    epochs: int = EpochsOption,
    pyramid: str = PyramidOption,
    fc_dim: int = FcDimOption,
    out: Path = OutOption,
    split: str = typer.Option("trainval", "--split", help=SPLIT_HELP),
    classes: str = ClassesOption,
    seed: int = typer.Option(None, "--seed", help="Seed of every random choice.", show_default="0"),
    batch_size: int = typer.Option(None, "--batch-size", show_default="64"),
    lr: float = typer.Option(None, "--lr", help="Initial learning rate.", show_default="0.01"),
    workers: int = WorkersOption,
    device: str = DeviceOption,
    resume: bool = typer.Option(
        True, "--resume/--no-resume", help="Continue from the resume state beside --output."
    ),
    preset_name: str = PresetOption,
) -> None:
    """Train a conv trunk with an SPP layer as a classifier (multi-size training, paper §2.3)."""
    from sppdet.detector.data.datasets import parse_classes
    from sppdet.detector.pretrain.initial import checkpoint_arch
    from sppdet.detector.pretrain.train import default_checkpoint, pretrain

    cfg = override(
        preset(preset_name).pretrain,
        backbone=backbone or checkpoint_arch(weights),
        weights=weights,
        sizes=int_list(sizes, "--sizes"),
        epochs=epochs,
        pyramid=int_list(pyramid, "--pyramid"),
        fc_dim=fc_dim,
        seed=seed,
        batch_size=batch_size,
        base_lr=lr,
        workers=workers,
        device=device,
    )
    console = Console(stderr=True)
    out = out or default_checkpoint(cfg.backbone)
    result = pretrain(
        data, out, cfg, split, parse_classes(classes), resume=resume, log=console.print
    )
    _print_pretrained(result, console)


@app.command("classify-eval")
def classify_eval_command(
    ckpt: Path = typer.Option(..., "--weights", help="Checkpoint written by `sppdet pretrain`."),
    data: Path = SourceOption,
    split: str = typer.Option("test", "--split", help=SPLIT_HELP),
    size: int = SizeOption,
    full_side: int = FullSideOption,
    view_scales: str = ViewScalesOption,
    views: int = typer.Option(10, "--views", help="10 (corners, centre, flips) or 18 (+ sides)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the background crops."),
    batch_size: int = typer.Option(32, "--batch-size"),
    workers: int = typer.Option(2, "--loader-threads", help=LOADER_THREADS_HELP),
    device: str = DeviceOption,
    report: Path = typer.Option(None, "--report", help="Also write the report as JSON here."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Top-1 / top-5 of a pretrain checkpoint: centre crop, full image, multi-view on conv5."""
    from sppdet.detector.pretrain.classify import classify_eval

    result = classify_eval(
        ckpt,
        data,
        split,
        size,
        full_side,
        int_list(view_scales, "--view-scales"),
        views,
        batch_size,
        workers,
        device or "auto",
        seed,
    )
    if report is not None:
        write_json(report, result.to_json())
    if as_json:
        print(json.dumps(result.to_json(), indent=2, sort_keys=True))
    else:
        _print_evaluation(result, Console())


def _print_pretrained(result: PretrainResult, console: Console) -> None:
    counts = ", ".join(f"{k} {v}" for k, v in result.train_counts.items())
    console.print(
        f"trained {result.epochs_run} epochs ({result.epochs_done} in all) on {counts}; "
        f"{result.heldout} held out; {result.seconds:.1f} s; wrote {result.out} "
        f"(resume state {result.state})"
    )


def _print_evaluation(result: ClassifyEvaluation, console: Console) -> None:
    from sppdet.detector.pretrain.views import VIEWS

    v = result.views
    labels = {
        "center": f"centre crop {v.size}",
        "full": f"full image, shorter side {v.full_side}",
        "multiview": f"{v.count} views on conv5, shorter side " + ",".join(map(str, v.view_scales)),
    }
    table = Table(title=f"{result.checkpoint} on {result.data} ({result.split})")
    for column in ("view", "samples", "top-1 %", "top-5 %", "mean class top-1 %"):
        table.add_column(column, justify="left" if column == "view" else "right")
    for name in VIEWS:
        r = result.results[name]
        table.add_row(
            labels[name],
            str(r.samples),
            f"{100 * r.top1:.2f}",
            "n/a" if r.top5 is None else f"{100 * r.top5:.2f}",
            f"{100 * r.mean_class_top1:.2f}",
        )
    console.print(table)
    counts = ", ".join(f"{k} {n}" for k, n in result.counts.items())
    console.print(f"samples per class: {counts}")
