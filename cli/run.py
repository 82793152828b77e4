"""``sppdet run`` (every stage on a dataset) and ``sppdet demo`` (the same on generated data)."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console

from sppdet.cli.app import app
from sppdet.cli.evaluate import print_voc
from sppdet.cli.features import FlipOption
from sppdet.cli.options import (
    BackboneOption,
    ClassesOption,
    DataOption,
    DeviceOption,
    FcPrecisionOption,
    ImagesOption,
    StagePresetOption,
    WeightsOption,
    WorkOption,
)
from sppdet.cli.train import HoldoutOption
from sppdet.detector.core.config import override, preset

if TYPE_CHECKING:  # the pipeline imports torch: only the commands that run it import it
    from sppdet.detector.pipeline import RunReport

DEMO = preset("demo")  # the demo's data set, drawings and shorter fine-tuning
log = logging.getLogger(__name__)


def _report(report: RunReport, console: Console) -> None:
    print_voc(report.evaluation, console)
    timing = ", ".join(f"{name} {sec:.1f}s" for name, sec in report.seconds.items())
    console.print(f"seconds per stage: {timing}")
    for warning in report.warnings:  # again at the end, where they are not scrolled away
        log.warning(warning)


@app.command("run")
def run_command(
    data: Path = DataOption,
    images: Path | None = ImagesOption,
    preset_name: str = StagePresetOption,
    work: Path = WorkOption,
    classes: str = ClassesOption,
    train_split: str = typer.Option("trainval", "--train-split", help="Split to train on."),
    test_split: str = typer.Option("test", "--test-split", help="Split to detect and score."),
    backbone: str = BackboneOption,
    weights: str = WeightsOption,
    workers: int = typer.Option(1, "--workers", min=1, help="Processes for proposals."),
    bbox: bool = typer.Option(True, "--bbox/--no-bbox", help="Apply box regression."),
    flip: bool = FlipOption,
    holdout: float = HoldoutOption,
    device: str = DeviceOption,
    precision: str = FcPrecisionOption,
) -> None:
    """Run every stage in order (propose, cache-features, finetune, train-svm, train-bbox,
    detect, evaluate), skipping what is already done, and print the VOC07 table."""
    from sppdet.cache.workdir import WorkDir
    from sppdet.detector.data.datasets import parse_classes
    from sppdet.detector.pipeline import run_pipeline
    from sppdet.detector.training.presets import stage_config
    from sppdet.detector.training.runtime import Runtime

    cfg = stage_config(WorkDir.at(work), preset_name)
    runtime = Runtime.create(device, precision, cfg.preset)
    cfg = dataclasses.replace(
        cfg,
        features=override(
            cfg.features, backbone=backbone, weights=weights, device=device, flip=flip
        ),
        finetune=override(cfg.finetune, holdout=holdout),
    )
    console = Console()
    report = run_pipeline(
        data,
        WorkDir.at(work),
        cfg,
        train_split,
        test_split,
        parse_classes(classes),
        workers,
        bbox,
        runtime=runtime,
        image_dir=images,
    )  # each stage's start is a log line on stderr
    _report(report, console)


@app.command("demo")
def demo_command(
    out: Path = typer.Option(Path("sppdet-demo"), "--out", help="Folder for data, work, pictures."),
    images: int = typer.Option(
        DEMO.demo.images, "--num-images", min=4, help="Synthetic images to make."
    ),
    iterations: int = typer.Option(None, "--iterations", help="Fine-tuning mini-batches."),
    workers: int = typer.Option(1, "--workers", min=1, help="Processes for proposals."),
    device: str = DeviceOption,
    precision: str = FcPrecisionOption,
) -> None:
    """Generate a synthetic VOC dataset and run the whole pipeline on it (demo preset: quick-cpu
    with a shorter fine-tuning): proposals, cache, finetune, SVMs, box regression, detect,
    evaluate, and pictures."""
    from sppdet.cache.workdir import WorkDir
    from sppdet.detector.data.datasets import load_dataset
    from sppdet.detector.data.synthetic import make_synthetic_voc
    from sppdet.detector.pipeline import draw_split, run_pipeline
    from sppdet.detector.training.runtime import Runtime

    console = Console()
    data = out / "data"
    if not (data / "ImageSets").is_dir():
        make_synthetic_voc(data, num_images=images)
    runtime = Runtime.create(device, precision, DEMO.preset)
    cfg = dataclasses.replace(
        DEMO,
        features=override(DEMO.features, device=device),  # the trunk's device
        finetune=override(DEMO.finetune, iterations=iterations),
    )
    work = WorkDir.at(out / "work")
    report = run_pipeline(data, work, cfg, workers=workers, runtime=runtime)
    classes = tuple(r.name for r in report.evaluation.results)
    test_set = load_dataset(data, "test", classes)
    drawings = draw_split(test_set, work, out / "drawings", cfg.demo.drawings)
    _report(report, console)
    console.print(f"pictures of detections: {drawings[0].parent} ({len(drawings)} images)")
