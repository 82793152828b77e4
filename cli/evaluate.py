"""``sppdet evaluate``: PASCAL VOC 2007 / 2010 AP of results files, or COCO AP of a results JSON;
with ``--work``, of the detections a work folder's ``detect`` wrote, on the dataset it recorded.

The AP table and the mAP go to stdout; notes and what was written, to stderr. The stages are
imported inside the command, so that ``--help`` does not import numpy or pycocotools.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.table import Table

from sppdet.cli.app import app
from sppdet.cli.options import ClassesOption
from sppdet.detector.core.errors import SppdetError

if TYPE_CHECKING:
    from sppdet.cache.workdir import WorkDir
    from sppdet.detector.evaluation.coco import CocoEvaluation
    from sppdet.detector.evaluation.voc import VocEvaluation

EVAL_REPORT = "eval.json"  # in WORK/reports/


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


def recorded_detection(work: WorkDir, split: str) -> dict[str, Any]:
    """What WORK's ``detect`` on SPLIT recorded: the dataset (``data``, ``classes``) and the
    results folder (``out``); refused, naming the splits it has, when it did not run on SPLIT."""
    found = work.recorded("detect", split)
    if found is None:
        splits = work.recorded_splits("detect")
        has = f"it has detections of {', '.join(map(repr, splits))}" if splits else "none"
        raise SppdetError(
            f"{work.settings_path}: no detections of split {split!r} recorded ({has}) ; run "
            f"`sppdet detect --work {work.root} --split {split}` first, or pass --split"
        )
    if "out" not in found:
        raise SppdetError(
            f"{work.settings_path}: detect on split {split!r} was run by an older sppdet that "
            f"did not record its dataset ; rerun `sppdet detect --work {work.root} --split "
            f"{split} --data DATA` (it only rewrites the results), or pass --data and --detections"
        )
    return found


@app.command("evaluate")
def evaluate(
    data: Path | None = typer.Option(
        None,
        "--data",
        help="VOC root or COCO .json (a COCO file's images need not be present).",
        show_default="with --work, the dataset its detect ran on",
    ),
    split: str = typer.Option(
        "test",
        "--split",
        help="Split name: ImageSets/Main/<split>.txt, or a COCO file's; with --work, the split "
        "its detect ran on (test-softmax: the softmax scorer's results on test).",
    ),
    work: Path | None = typer.Option(
        None,
        "--work",
        help="Work folder whose detections to score, on the dataset and classes its `sppdet "
        "detect` recorded for --split; the report goes to WORK/reports/eval.json.",
    ),
    detections: Path | None = typer.Option(
        None,
        "--detections",
        help="Folder of VOC results files <comp>_det_<split>_<class>.txt, lines "
        "'<image_id> <score> <x1> <y1> <x2> <y2>' with 1-based pixel boxes.",
        show_default="with --work, the folder its detect wrote",
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
        "scored with pycocotools COCOeval: mAP@[.5:.95], AP50, AP75. Image ids as detect writes "
        "them (a COCO file's own; 1..N in split order for a VOC tree) or VOC id strings.",
    ),
    classes: str | None = ClassesOption,
    report_file: Path | None = typer.Option(
        None,
        "--report",
        help="Also write the report (per class AP, npos, TP, FP, and the precision/recall "
        "arrays; what --work writes to WORK/reports/eval.json) to this JSON file.",
    ),
    plot: Path | None = typer.Option(
        None,
        "--plot",
        help="Folder for per-class precision-recall curves, pr_<class>.png; needs pip install "
        "'sppdet[plot]'.",
    ),
) -> None:
    """Score detections: per-class AP table and mAP, with the official devkit's rules."""
    from sppdet.cache.atomic import write_json
    from sppdet.cache.workdir import WorkDir
    from sppdet.detector.data.datasets import parse_classes
    from sppdet.detector.evaluation.coco import evaluate_coco
    from sppdet.detector.evaluation.plot import draw_curves, eval_report
    from sppdet.detector.evaluation.results import evaluate_voc_folder

    if voc2007 and voc2010:
        raise SppdetError("--voc2007 and --voc2010 exclude each other; pick one")
    if coco is not None and (voc2007 or voc2010 or detections is not None):
        raise SppdetError(
            "--coco scores a COCO results JSON; drop --voc2007/--voc2010/--detections"
        )
    names = parse_classes(classes)
    workdir = None if work is None else WorkDir.at(work)
    if workdir is not None:
        found = recorded_detection(workdir, split)
        data = data or (Path(found["data"]) if found.get("data") else None)
        names = names or tuple(found["classes"])
        split = found["split"]  # the dataset's (detect --scorer softmax records test-softmax)
        if coco is None and detections is None:
            detections = workdir.root / found["out"]  # relative: inside the work folder
    if data is None:
        raise SppdetError(
            "no dataset to score against: pass --data, or --work a folder whose detect recorded one"
        )
    if coco is None and detections is None:
        raise SppdetError(
            "nothing to score: pass --detections DIR (VOC results files), --coco RESULTS.json "
            "or --work WORK"
        )
    out, err = Console(), Console(stderr=True)
    if coco is not None:
        evaluation: VocEvaluation | CocoEvaluation = evaluate_coco(data, coco, split, names)
        _print_coco(evaluation, out)
    else:
        metric = "voc2010" if voc2010 else "voc2007"
        evaluation = evaluate_voc_folder(data, split, detections, names, metric)
        print_voc(evaluation, out)
    for note in evaluation.notes:
        err.print(f"note: {note}", markup=False, highlight=False)
    scored = coco if coco is not None else detections
    report = eval_report(evaluation, data=str(data), split=split, detections=str(scored))
    targets = [report_file] if report_file is not None else []
    if workdir is not None:
        targets.append(workdir.report(EVAL_REPORT))
    for target in targets:
        write_json(target, report)
        err.print(f"wrote {target}", markup=False, highlight=False)
    if plot is not None:
        pictures = draw_curves(evaluation, plot)
        err.print(
            f"wrote {len(pictures)} precision-recall curves to {plot}",
            markup=False,
            highlight=False,
        )
