"""``sppdet detect`` and ``sppdet combine``: scored windows to VOC and COCO results."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console

from sppdet.cache.locks import waiting_for_writers
from sppdet.cli.app import app
from sppdet.cli.image_paths import image_files
from sppdet.cli.jsonl import image_line, split_lines
from sppdet.cli.options import (
    ClassesOption,
    DataOption,
    DeviceOption,
    ExecutorOption,
    FcPrecisionOption,
    FcRankFitOption,
    FcRankOption,
    FeaturesOption,
    ForceOption,
    RayAddressOption,
    StagePresetOption,
    WaitOption,
    WorkOption,
    fc_compression,
)
from sppdet.detector.core.errors import SppdetError
from sppdet.detector.core.progress import track

if TYPE_CHECKING:  # the stages import torch: only the commands that run them import them
    from sppdet.detector.detection.stage import DetectResult

TestSplitOption = typer.Option("test", "--split", help="Split to detect on.")


def _report(result: DetectResult, console: Console) -> None:
    counts = ", ".join(f"{k} {v}" for k, v in result.detections.items())
    console.print(f"detections per class: {counts}")
    console.print(  # the ground truth: when the split has boxes
        f"wrote VOC results files and COCO JSON (results, ground truth) to {result.out}"
    )


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
        None,
        "--image",
        help="Detect on image files instead of a split: a file, a folder (the images in it) or "
        "a quoted glob ('imgs/*.jpg'); repeatable. Paths after the options count too.",
    ),
    more_images: list[Path] = typer.Argument(
        None, metavar="IMAGES", help="More --image paths (an unquoted imgs/*.jpg lands here)."
    ),
    images_from: Path = typer.Option(
        None, "--images-from", help="A text file of --image paths, one per line."
    ),
    jsonl: bool = typer.Option(
        False,
        "--jsonl",
        help="Print one JSON object per image on stdout, for a split too (--image always does).",
    ),
    draw: Path = typer.Option(
        None,
        "--draw",
        help="With --image: folder for labelled pictures, each named and encoded as its image "
        "(JPEG in, JPEG out).",
    ),
    top: int = typer.Option(
        None,
        "--top",
        min=1,
        help="At most this many detections drawn per picture, best first.",
        show_default="all above the score threshold",
    ),
    score_threshold: float = typer.Option(
        None,
        "--score-threshold",
        min=0.0,
        max=1.0,
        help="Probability a detection needs (the calibrated SVM margin, or the softmax) to be "
        "kept: in pictures, JSON lines and results files.",
        show_default="0.5 for pictures; 0 (all) for JSON lines and results files",
    ),
    scorer: str = typer.Option(
        "svm",
        "--scorer",
        help="svm: the class SVMs' margins (results files rank by them); softmax: the fine-tuned "
        "net's fc8 softmax (a split's results go to WORK/detections/S-softmax).",
    ),
    features: str = FeaturesOption,
    device: str = DeviceOption,
    precision: str = FcPrecisionOption,
    ranks: str = FcRankOption,
    rank_fit: str = FcRankFitOption,
    force: bool = ForceOption,
    executor: str = ExecutorOption,
    ray_address: str | None = RayAddressOption,
    wait: bool = WaitOption,
) -> None:
    """Score every proposal with every class SVM; keep > -1.5, NMS 0.3, top 100, regress, NMS 0.3.

    With --image, the files' proposals and conv5 maps are computed on the fly with the settings
    the models were trained with, and the detections are printed as JSON lines.
    """
    named = [*(image or []), *(more_images or [])]
    image = image_files(named, images_from) if named or images_from else []  # before any work
    from sppdet.cache.workdir import WorkDir
    from sppdet.detector import Detector
    from sppdet.detector.core.config import DRAW_SCORE_THRESHOLD
    from sppdet.detector.core.parallel import Executor
    from sppdet.detector.data.draw import draw_detections, picture_path
    from sppdet.detector.data.images import read_image
    from sppdet.detector.detection.scorer import (
        check_scoring,
        model_with_fc_rank,
        uncalibrated,
    )
    from sppdet.detector.detection.stage import run_detect
    from sppdet.detector.inference.model import model_from_work
    from sppdet.detector.training.inputs import open_split
    from sppdet.detector.training.presets import record_config, stage_config
    from sppdet.detector.training.runtime import Runtime

    compression = fc_compression(ranks, rank_fit)  # a malformed --fc-rank fails before any work
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
        if draw is not None and len({p.name for p in image}) != len(image):
            raise SppdetError("--draw: give --image files distinct names (pictures keep them)")
        if compression is None:
            detector = Detector.load(
                workdir.root, device or "auto", runtime.precision, detect=cfg, scorer=scorer
            )
        else:  # the work folder's model, its fc6/fc7 at low rank (kept in WORK/models)
            model = model_with_fc_rank(workdir, model_from_work(workdir, cfg), compression)
            detector = Detector.from_model(
                model, device or "auto", runtime.precision, str(workdir.root), scorer
            )
        if draw is not None and not detector.calibrated:
            raise SppdetError(uncalibrated(str(workdir.model("svm"))))
        drawn = DRAW_SCORE_THRESHOLD if score_threshold is None else score_threshold
        start, total, without = time.perf_counter(), 0, 0
        for path in track(image, len(image), "detect", "img"):
            found = detector.predict(path, score_threshold=score_threshold)[0]
            print(image_line(path, found.to_json()), flush=True)
            total, without = total + len(found), without + (len(found) == 0)
            if draw is not None:
                best = found[:top]
                picture = draw_detections(
                    read_image(path), best.boxes, best.labels, best.scores, best.class_names, drawn
                )
                picture.save(picture_path(path, draw))
        notes = Console(stderr=True, highlight=False)
        notes.print(
            f"detect: {len(image)} images, {total} detections ({without} images without any) "
            f"in {time.perf_counter() - start:.1f} s",
            markup=False,
        )
        if draw is not None:
            notes.print(f"wrote pictures to {draw}", markup=False)
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
            workdir,
            inputs,
            cfg,
            bbox,
            out,
            force,
            executor=runner,
            data=data,
            runtime=runtime,
            scoring=check_scoring(scorer, features),
            min_probability=score_threshold or 0.0,
            fc_rank=compression,
        )
    console = Console(stderr=jsonl)  # with --jsonl, stdout holds the JSON lines only
    if result.drift is not None:
        console.print(result.drift.describe(runtime.precision, "SVM scores"))
    _report(result, console)
    if jsonl:
        for line in split_lines(inputs.dataset, result.out):
            print(line)


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
    from sppdet.cache.workdir import WorkDir
    from sppdet.detector.data.datasets import load_dataset, parse_classes
    from sppdet.detector.detection.combine import run_combine
    from sppdet.detector.training.presets import stage_config
    from sppdet.detector.training.runtime import Runtime

    workdirs = [WorkDir.at(w) for w in works]
    names = parse_classes(classes)
    if names is None:
        names = tuple(workdirs[0].load_model("svm", "sppdet train-svm")["classes"])
    dataset = load_dataset(data, split, names)
    settings = stage_config(workdirs[0], preset_name)  # the first model's
    runtime = Runtime.create(device, preset=settings.preset)
    _report(run_combine(workdirs, dataset, settings.detect, out, runtime.device), Console())
