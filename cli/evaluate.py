"""``sppdet evaluate``: PASCAL VOC 2007 / 2010 AP of results files, or COCO AP of a results JSON."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from sppdet.cache.atomic import write_json
from sppdet.cli.app import app
from sppdet.cli.options import ClassesOption, DataOption
from sppdet.detector.core.errors import SppdetError
from sppdet.detector.data.datasets import parse_classes
from sppdet.detector.evaluation.coco import CocoEvaluation, evaluate_coco
from sppdet.detector.evaluation.results import evaluate_voc_folder
from sppdet.detector.evaluation.voc import VocEvaluation


def _ap_text(ap: float | None) -> str:
    return "n/a" if ap is None else f"{100 * ap:.2f}"


def print_voc(evaluation: VocEvaluation, console: Console) -> None:
    title = "VOC2007 11-point AP" if evaluation.metric == "voc2007" else "VOC2010 all-point AP"
    table = Table(title=f"{title}, split {evaluation.split!r}")
    # "on difficult": detections matched to a difficult box, neither TP nor FP.
    for column in ("class", "npos", "dets", "TP", "FP", "on difficult", "AP %"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for r in evaluation.results:
        table.add_row(
            r.name,
            str(r.npos),
            str(r.detections),
            str(r.true_positives),
            str(r.false_positives),
            str(r.difficult_matches),
            _ap_text(r.ap),
        )
    console.print(table)
    console.print(f"mAP ({evaluation.metric}): {_ap_text(evaluation.map)}")


def _print_coco(evaluation: CocoEvaluation, console: Console) -> None:
    table = Table(title="COCO AP@[.5:.95] per class")
    table.add_column("class")
    table.add_column("npos", justify="right")
    table.add_column("AP %", justify="right")
    for name, ap in evaluation.ap.items():
        table.add_row(name, str(evaluation.npos[name]), _ap_text(ap))
    console.print(table)
    if evaluation.summary:
        console.print(evaluation.summary.rstrip(), markup=False, highlight=False)
    console.print(
        f"mAP@[.5:.95] {_ap_text(evaluation.stats[0])}  AP50 {_ap_text(evaluation.stats[1])}  "
        f"AP75 {_ap_text(evaluation.stats[2])}"
    )


@app.command("evaluate")
def evaluate(
    data: Path = DataOption,
    split: str = typer.Option("test", "--split", help="Split name: ImageSets/Main/<split>.txt."),
    detections: Path | None = typer.Option(
        None,
        "--detections",
        help="Folder of VOC results files <comp>_det_<split>_<class>.txt, lines "
        "'<image_id> <score> <x1> <y1> <x2> <y2>' with 1-based pixel boxes.",
    ),
    voc2007: bool = typer.Option(
        False, "--voc2007", help="VOC 2007 11-point AP (the default with --detections)."
    ),
    voc2010: bool = typer.Option(
        False, "--voc2010", help="VOC 2010+ all-point AP (area under the precision envelope)."
    ),
    coco: Path | None = typer.Option(
        None,
        "--coco",
        help="COCO results JSON (a list of {image_id, category_id, bbox (x, y, w, h), score}) "
        "scored with pycocotools COCOeval: mAP@[.5:.95], AP50, AP75. For a VOC --data, "
        "category ids are 1..K in class order and image ids are the VOC ids.",
    ),
    classes: str | None = ClassesOption,
    json_out: Path | None = typer.Option(
        None, "--json", help="Also write the per-class AP and mAP to this JSON file."
    ),
) -> None:
    """Score detections: per-class AP table and mAP, with the official devkit's rules."""
    if voc2007 and voc2010:
        raise SppdetError("--voc2007 and --voc2010 exclude each other; pick one")
    if coco is not None and (voc2007 or voc2010 or detections is not None):
        raise SppdetError(
            "--coco scores a COCO results JSON; drop --voc2007/--voc2010/--detections"
        )
    if coco is None and detections is None:
        raise SppdetError(
            "nothing to score: pass --detections DIR (VOC results files) or --coco RESULTS.json"
        )
    console = Console()
    if coco is not None:
        evaluation: VocEvaluation | CocoEvaluation = evaluate_coco(
            data, coco, split, parse_classes(classes)
        )
        _print_coco(evaluation, console)
    else:
        metric = "voc2010" if voc2010 else "voc2007"
        evaluation = evaluate_voc_folder(data, split, detections, parse_classes(classes), metric)
        print_voc(evaluation, console)
    for note in evaluation.notes:
        console.print(f"note: {note}", markup=False, highlight=False)
    if json_out is not None:
        report = {**evaluation.to_json(), "data": str(data), "split": split}
        write_json(json_out, report)
        console.print(f"wrote {json_out}", markup=False, highlight=False)
