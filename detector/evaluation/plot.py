"""Per-class precision-recall curves of an evaluation: in ``reports/eval.json`` (``eval_report``)
and drawn as PNG pictures (``draw_curves``, ``evaluate --plot``).

A VOC curve is the devkit's: one point per detection in score order (recall = TP / npos,
precision = TP / (TP + FP)), with AP from it by the VOC2007 11-point or the VOC2010 all-point
rule. A COCO curve is COCOeval's interpolated precision at IoU 0.5 over its 101 recall points (the
curve under AP50). matplotlib (the ``plot`` extra) is imported only to draw, with the Agg canvas:
no display is needed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sppdet.detector.core.errors import SppdetError
from sppdet.detector.evaluation.coco import CURVE_IOU, CocoEvaluation
from sppdet.detector.evaluation.voc import VocEvaluation

PLOT_SIZE_INCHES = (5.0, 4.0)
PLOT_DPI = 100
UNSAFE_FILE_CHARACTERS = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class ClassCurve:
    """One class's precision-recall curve and the numbers it comes with."""

    name: str
    recall: np.ndarray  # [N] float64, non-decreasing
    precision: np.ndarray  # [N] float64
    ap: float | None  # None: no ground truth
    npos: int
    true_positives: int
    false_positives: int
    ap50: float | None = None  # COCO: the AP under the curve (AP at IoU 0.5); ``ap`` is AP@[.5:.95]

    def to_json(self) -> dict[str, Any]:
        out = {
            "ap": self.ap,
            "npos": self.npos,
            "true_positives": self.true_positives,
            "false_positives": self.false_positives,
            "recall": self.recall.tolist(),
            "precision": self.precision.tolist(),
        }
        return out if self.ap50 is None else {**out, "ap50": self.ap50}

    def title(self) -> str:
        """The picture's title: the class, its AP(s) and counts."""
        ap = "n/a" if self.ap is None else f"{100 * self.ap:.2f}"
        aps = f"AP {ap}" if self.ap50 is None else f"AP50 {100 * self.ap50:.2f}, AP@[.5:.95] {ap}"
        counts = f"npos {self.npos}, TP {self.true_positives}, FP {self.false_positives}"
        return f"{self.name}: {aps} ({counts})"


def class_curves(evaluation: VocEvaluation | CocoEvaluation) -> list[ClassCurve]:
    """The per-class curves of a VOC or a COCO evaluation (class order)."""
    if isinstance(evaluation, VocEvaluation):
        return [
            ClassCurve(
                r.name,
                np.asarray(r.recall, np.float64),
                np.asarray(r.precision, np.float64),
                r.ap,
                r.npos,
                r.true_positives,
                r.false_positives,
            )
            for r in evaluation.results
        ]
    curves = []
    for name, ap in evaluation.ap.items():
        precision = evaluation.precision.get(name)
        points = evaluation.recall_points if precision is not None else np.zeros(0)
        curves.append(
            ClassCurve(
                name,
                np.asarray(points, np.float64),
                np.zeros(0) if precision is None else np.asarray(precision, np.float64),
                ap,
                evaluation.npos[name],
                evaluation.true_positives.get(name, 0),
                evaluation.false_positives.get(name, 0),
                None if precision is None else float(np.mean(precision)),
            )
        )
    return curves


def curve_kind(evaluation: VocEvaluation | CocoEvaluation) -> str:
    """What the curves and APs of EVALUATION are, in words (the pictures' titles)."""
    if isinstance(evaluation, CocoEvaluation):
        return f"COCO interpolated precision at IoU {CURVE_IOU}"
    return "VOC2007 11-point AP" if evaluation.metric == "voc2007" else "VOC2010 all-point AP"


def eval_report(evaluation: VocEvaluation | CocoEvaluation, **context: Any) -> dict[str, Any]:
    """``reports/eval.json``: the evaluation's summary (``to_json``), CONTEXT (e.g. data and
    split), and per class its curve, AP, npos, TP and FP (``classes``)."""
    return {
        **evaluation.to_json(),
        **context,
        "classes": {c.name: c.to_json() for c in class_curves(evaluation)},
    }


def curve_file_names(names: Sequence[str]) -> list[str]:
    """One PNG file name per class name: pr_<name>.png, characters unsafe in a file name
    replaced, a clash told apart by the class's index."""
    stems = [f"pr_{UNSAFE_FILE_CHARACTERS.sub('_', n)}" for n in names]
    return [
        f"{stem}_{k}.png" if stems.count(stem) > 1 else f"{stem}.png"
        for k, stem in enumerate(stems)
    ]


def draw_curves(evaluation: VocEvaluation | CocoEvaluation, out: str | Path) -> list[Path]:
    """One PNG per class in OUT: its precision-recall curve, titled with its AP; returns the
    files written (a class without ground truth has no curve and no file)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise SppdetError(
            "--plot: matplotlib is not installed ; pip install 'sppdet[plot]'"
        ) from None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    curves = class_curves(evaluation)
    kind = curve_kind(evaluation)
    written = []
    for curve, file_name in zip(curves, curve_file_names([c.name for c in curves]), strict=True):
        if curve.ap is None:
            continue
        figure = Figure(figsize=PLOT_SIZE_INCHES, dpi=PLOT_DPI)
        FigureCanvasAgg(figure)
        axes = figure.add_subplot()
        # as the devkit's VOCevaldet draws it: a line through the points (a lone point marked)
        marker = "o" if len(curve.recall) == 1 else None
        axes.plot(curve.recall, curve.precision, "-", marker=marker, linewidth=1.5)
        axes.set_xlim(0.0, 1.0)
        axes.set_ylim(0.0, 1.02)
        axes.set_xlabel("recall")
        axes.set_ylabel("precision")
        axes.grid(alpha=0.3)
        axes.set_title(f"{curve.title()}\n{kind}", fontsize=9)
        path = out / file_name
        figure.savefig(path)
        written.append(path)
    return written
