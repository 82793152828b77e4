"""VOC results files, and the ``evaluate --voc2007/--voc2010`` stage that scores a folder of them.

A results file ``<comp>_det_<split>_<class>.txt`` holds one line ``<image_id> <score> <x1> <y1>
<x2> <y2>`` per detection, in 1-based pixels; in memory boxes are 0-based. Subtracting 1 from a
1-based coordinate >= 1 is exact in binary floating point, so IoUs computed on 0-based boxes equal
the devkit's bit for bit. Numbers are written in shortest round-trip form, so a file read back
gives the same scores, boxes and score ties.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sppdet.cache.atomic import atomic_output
from sppdet.detector.core.config import EvalConfig
from sppdet.detector.core.errors import SppdetError
from sppdet.detector.data.datasets import load_dataset
from sppdet.detector.evaluation.voc import ClassDetections, Detections, VocEvaluation, evaluate_voc

RESULTS_COMP = "comp4"  # VOC competition 4: training data of one's own choosing
# Characters a results line may have: an id and five numbers need far fewer, and the parser's id
# column is as wide as the longest id, so one huge line must not reach it.
MAX_RESULTS_LINE = 4096
_LINE_FIX = "write one detection a line: '<image_id> <score> <x1> <y1> <x2> <y2>', 1-based pixels"


def results_file(folder: str | Path, split: str, name: str, comp: str = RESULTS_COMP) -> Path:
    return Path(folder) / f"{comp}_det_{split}_{name}.txt"


def write_voc_results(
    folder: str | Path,
    split: str,
    classes: Sequence[str],
    detections: Detections,
    comp: str = RESULTS_COMP,
) -> list[Path]:
    """Write one results file per class (empty when it has no detections), 1-based boxes.

    Lines keep the detections' order (it decides score ties) and numbers are written in
    shortest round-trip form, so reading a file back gives the same scores and ties.
    """
    paths = []
    for name in classes:
        dets = detections.get(name, ClassDetections.empty())
        rows = zip(
            dets.image_ids.tolist(), dets.scores.tolist(), (dets.boxes + 1).tolist(), strict=True
        )
        text = "".join(f"{i} {s!r} {b[0]!r} {b[1]!r} {b[2]!r} {b[3]!r}\n" for i, s, b in rows)
        path = results_file(folder, split, name, comp)
        with atomic_output(path) as tmp:
            tmp.write_text(text)
        paths.append(path)
    return paths


def _diagnose_results_lines(path: Path, lines: list[str]) -> None:
    """Raise the SppdetError naming the first malformed line of a results file."""
    for n, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 6:
            raise SppdetError(
                f"{path}:{n}: expected 6 fields '<image_id> <score> <x1> <y1> <x2> <y2>', "
                f"found {len(fields)} ; {_LINE_FIX}"
            )
        for what, text in zip(("score", "x1", "y1", "x2", "y2"), fields[1:], strict=True):
            try:
                value = float(text)
            except ValueError:
                raise SppdetError(
                    f"{path}:{n}: {what} {text!r} is not a number ; {_LINE_FIX}"
                ) from None
            if not math.isfinite(value):
                raise SppdetError(f"{path}:{n}: {what} {text!r} is not finite ; {_LINE_FIX}")


def _parse_results_file(path: Path, known_ids: Collection[str] | None) -> ClassDetections:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise SppdetError(
            f"{path}: cannot read results file ({exc}) ; write it as UTF-8 text, one detection "
            "a line"
        ) from None
    if not text.strip():
        return ClassDetections.empty()
    lines = text.splitlines()
    # The id column is sized by its longest id, so both are bounded before any array exists:
    # lines by MAX_RESULTS_LINE, ids by the split's own ids.
    for n, line in enumerate(lines, start=1):
        if len(line) > MAX_RESULTS_LINE:
            raise SppdetError(
                f"{path}:{n}: a line of {len(line):,} characters, over the {MAX_RESULTS_LINE:,} a "
                f"results line may have ; {_LINE_FIX}"
            )
    first_fields = [line.split(None, 1)[:1] for line in lines]
    if known_ids is not None:
        for n, fields in enumerate(first_fields, start=1):
            if fields and fields[0] not in known_ids:
                raise SppdetError(
                    f"{path}:{n}: image id {fields[0]!r} is not in the evaluated split ; check "
                    "--split and --data"
                )
    # numpy's C parser reads 100k lines in ~0.1 s; a line it rejects is diagnosed in Python.
    width = max(len(fields[0]) for fields in first_fields if fields)
    dtype = np.dtype([("id", f"U{width}"), ("values", np.float64, (5,))])
    try:
        table = np.loadtxt(io.StringIO(text), dtype=dtype, comments=None, ndmin=1)
    except ValueError as exc:
        _diagnose_results_lines(path, lines)
        raise SppdetError(f"{path}: not a VOC results file ({exc}) ; {_LINE_FIX}") from None
    numbers, image_ids = table["values"], table["id"]
    if not np.isfinite(numbers).all():
        _diagnose_results_lines(path, lines)
    return ClassDetections(image_ids, numbers[:, 0], numbers[:, 1:] - 1)


@dataclass
class VocResults:
    detections: dict[str, ClassDetections]
    files: dict[str, Path]  # class -> file read
    missing: list[str]  # classes without a file (no detections)
    ignored: list[Path]  # files of other classes


def read_voc_results(
    folder: str | Path,
    split: str,
    classes: Sequence[str],
    image_ids: Collection[str] | None = None,
) -> VocResults:
    """Read ``*_det_<split>_<class>.txt`` from FOLDER for each of CLASSES (boxes -> 0-based).

    An image id outside IMAGE_IDS is an error, as in the devkit. A class without a file has no
    detections; a file for a class outside CLASSES is reported and skipped.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise SppdetError(f"{folder}: detections folder not found ; pass --detections the folder")
    pattern = re.compile(rf"^(?P<comp>.+)_det_{re.escape(split)}_(?P<cls>.+)\.txt$")
    found: dict[str, list[Path]] = {}
    for path in sorted(folder.iterdir()):
        match = pattern.match(path.name)
        if match and path.is_file():
            found.setdefault(match["cls"], []).append(path)
    if not found:
        raise SppdetError(
            f"{folder}: no results files '<comp>_det_{split}_<class>.txt'; check --split and "
            "--detections"
        )
    known = set(image_ids) if image_ids is not None else None
    detections, files, missing = {}, {}, []
    for name in classes:
        paths = found.get(name, [])
        if len(paths) > 1:
            raise SppdetError(
                f"{folder}: several results files for class {name!r} "
                f"({', '.join(p.name for p in paths)}); keep one"
            )
        if not paths:
            missing.append(name)
            continue
        detections[name] = _parse_results_file(paths[0], known)
        files[name] = paths[0]
    ignored = [p for name, paths in found.items() if name not in classes for p in paths]
    return VocResults(detections, files, missing, ignored)


def evaluate_voc_folder(
    data: str | Path,
    split: str,
    detections_dir: str | Path,
    classes: Sequence[str] | None = None,
    metric: str = "voc2007",
    config: EvalConfig | None = None,
) -> VocEvaluation:
    """The ``evaluate --voc2007/--voc2010`` stage: dataset + results folder -> per-class AP."""
    config = config or EvalConfig()
    dataset = load_dataset(data, split, classes)
    results = read_voc_results(
        detections_dir, split, dataset.classes, [r.image_id for r in dataset.records]
    )
    evaluation = evaluate_voc(dataset, results.detections, metric, config.iou_threshold)
    evaluation.notes += [f"no results file for class {name!r}: AP 0" for name in results.missing]
    evaluation.notes += [
        f"{path.name} ignored: its class is not one of the evaluated classes (see --classes)"
        for path in results.ignored
    ]
    return evaluation
