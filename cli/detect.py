"""``sppdet detect`` and ``sppdet combine``: scored windows to VOC and COCO results."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

from sppdet.cache.locks import waiting_for_writers
from sppdet.cache.workdir import WorkDir
from sppdet.cli.app import app
from sppdet.cli.options import (
    ClassesOption,
    DataOption,
    DeviceOption,
    ExecutorOption,
    FcPrecisionOption,
    FeaturesOption,
    ForceOption,
    RayAddressOption,
    StagePresetOption,
    WaitOption,
    WorkOption,
)
from sppdet.detector.core.errors import SppdetError
from sppdet.detector.core.parallel import Executor
from sppdet.detector.data.datasets import load_dataset, parse_classes
from sppdet.detector.detection.combine import run_combine
from sppdet.detector.detection.images import detect_images
from sppdet.detector.detection.stage import DetectResult, run_detect
from sppdet.detector.training.inputs import open_split
from sppdet.detector.training.presets import record_config, stage_config
from sppdet.detector.training.runtime import Runtime

TestSplitOption = typer.Option("test", "--split", help="Split to detect on.")


def _report(result: DetectResult, console: Console) -> None:
    counts = ", ".join(f"{k} {v}" for k, v in result.detections.items())
    console.print(f"detections per class: {counts}")
    console.print(f"wrote VOC results files and COCO JSON to {result.out}")


@app.command("detect")
def detect_command(
    data: Path = typer.Option(
        None, "--data", help="VOC root or COCO .json whose split to detect on (or use --image)."
    ),
    split: str = TestSplitOption,
    classes: str = ClassesOption,
    work: Path = WorkOption,
    preset_name: str = StagePresetOption,
    out: Path = typer.Option(None, "--out", help="Results folder [default: WORK/detections/S]."),
    bbox: bool = typer.Option(True, "--bbox/--no-bbox", help="Apply box regression."),
    image: list[Path] = typer.Option(
        None, "--image", help="An image file to detect on instead of a split (repeatable)."
    ),
    draw: Path = typer.Option(None, "--draw", help="With --image: folder for labelled pictures."),
    top: int = typer.Option(5, "--top", min=1, help="Detections drawn per picture, best first."),
    features: str = FeaturesOption,
    device: str = DeviceOption,
    precision: str = FcPrecisionOption,
    force: bool = ForceOption,
    executor: str = ExecutorOption,
    ray_address: str | None = RayAddressOption,
    wait: bool = WaitOption,
) -> None:
    """Score every proposal with every class SVM; keep > -1.5, NMS 0.3, regress, top 100.

    With --image, the files' proposals and conv5 maps are computed on the fly with the settings
    the models were trained with, and the detections are printed as JSON lines.
    """
    workdir = WorkDir.at(work)
    settings = stage_config(workdir, preset_name)
    cfg = settings.detect
    runtime = Runtime.create(device, precision, settings.preset)
    runner = Executor(executor, address=ray_address)
    if image and runner.kind != "local":
        raise SppdetError("--image: detects on this machine; leave out --executor ray")
    if image:
        if features != "spp":
            raise SppdetError("--image: detects with SPP features only; leave out --features")
        found_per_file = detect_images(workdir, list(image), draw, cfg, top, runtime)
        for path, found in found_per_file.items():
            print(json.dumps({"image": path, "detections": [d.to_json() for d in found]}))
        if draw is not None:
            Console().print(f"wrote pictures to {draw}")
        return
    if data is None:
        raise SppdetError("detect needs --data (a dataset split) or --image FILE")
    inputs = open_split(
        workdir,
        data,
        split,
        classes,
        model_classes_from="svm",
        features=features,
        device=runtime.device,
    )
    record_config(workdir, settings)  # the folder's preset, when it has none yet
    with waiting_for_writers(wait):
        result = run_detect(
            workdir, inputs, cfg, bbox, out, force, executor=runner, data=data, runtime=runtime
        )
    console = Console()
    if result.drift is not None:
        console.print(result.drift.describe(runtime.precision, "SVM scores"))
    _report(result, console)


@app.command("combine")
def combine_command(
    works: list[Path] = typer.Option(..., "--work", help="Work folders of the models (2 or more)."),
    out: Path = typer.Option(..., "--out", help="Results folder of the combination."),
    data: Path = DataOption,
    split: str = TestSplitOption,
    classes: str = ClassesOption,
    preset_name: str = StagePresetOption,
    device: str = DeviceOption,
) -> None:
    """Model combination (paper 4.4): NMS over the union of the models' scored windows."""
    workdirs = [WorkDir.at(w) for w in works]
    names = parse_classes(classes)
    if names is None:
        names = tuple(workdirs[0].load_model("svm", "sppdet train-svm")["classes"])
    dataset = load_dataset(data, split, names)
    settings = stage_config(workdirs[0], preset_name)  # the first model's
    runtime = Runtime.create(device, preset=settings.preset)
    _report(run_combine(workdirs, dataset, settings.detect, out, runtime.device), Console())
