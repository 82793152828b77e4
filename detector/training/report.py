"""Training you can watch: a training stage's metrics as a CSV file in WORK/reports/ and, when
asked, as TensorBoard scalars (``--tensorboard DIR``); the log lines go through ``logging``.

``MetricsLog`` is one run's table. ``start`` rewrites the CSV with the rows the run already has
(none for a fresh run; a resumed fine-tuning's rows up to its checkpoint, from the checkpoint's
history), then ``add`` appends each new row as it comes, so a resumed run neither repeats a
header nor duplicates the rows logged after its checkpoint by the interrupted run. TensorBoard
does the same with ``purge_step``: events at or after the resumed step are dropped. Numbers are
written with ``repr``, so the CSV gives back exactly the floats of the training's history.

torch.utils.tensorboard (the ``tensorboard`` extra) is imported only when a TensorBoard folder is
given.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Mapping, Sequence, Sized
from pathlib import Path
from typing import Any

from sppdet.cache.atomic import write_bytes
from sppdet.cache.workdir import WorkDir
from sppdet.detector.core.errors import SppdetError

log = logging.getLogger(__name__)

Row = Mapping[str, Any]


def summary_writer_class(folder: str | Path) -> Any:
    """torch.utils.tensorboard's SummaryWriter; a one-line error naming FOLDER and the extra to
    install when the tensorboard package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise SppdetError(
            f"--tensorboard {folder}: the tensorboard package is not installed ; "
            "pip install 'sppdet[tensorboard]'"
        ) from None
    return SummaryWriter


def _csv_text(columns: Sequence[str], rows: Sequence[Row], header: bool) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    if header:
        writer.writeheader()
    for row in rows:
        writer.writerow({k: repr(v) if isinstance(v, float) else v for k, v in row.items()})
    return buffer.getvalue()


class MetricsLog:
    """One training run's metrics: rows of named values, in WORK/reports/<NAME>.csv and, with
    TENSORBOARD, as scalars ``<NAME>/<column>`` at step ``row[STEP]`` (or, with GROUP, one
    series per value of that column: ``<NAME>/<row[GROUP]>/<column>``, e.g. per class).

    The CSV's columns are the first row's keys; every row must have the same ones.
    """

    def __init__(
        self,
        work: WorkDir,
        name: str,
        step: str | None = None,
        tensorboard: str | Path | None = None,
        group: str | None = None,
    ) -> None:
        self.path = work.report(f"{name}.csv")
        self.name, self.step, self.group = name, step, group
        self.tensorboard_folder = None if tensorboard is None else Path(tensorboard)
        # checked here, before any training, rather than when the first row comes
        self._writer_class = None if tensorboard is None else summary_writer_class(tensorboard)
        self._writer: Any = None
        self._columns: list[str] | None = None

    def start(self, rows: Sequence[Row] = (), resumed_at: int | None = None) -> MetricsLog:
        """Begin the run, or resume it at step RESUMED_AT: the CSV becomes exactly ROWS, the
        rows the run already has; TensorBoard events after RESUMED_AT (all, when it is None),
        left by an earlier or interrupted run, are dropped."""
        self._columns = list(rows[0]) if rows else None
        text = _csv_text(self._columns, rows, header=True) if self._columns else ""
        write_bytes(self.path, text.encode())
        if self._writer_class is not None:
            purge_step = 0 if resumed_at is None else resumed_at + 1
            self._writer = self._writer_class(str(self.tensorboard_folder), purge_step=purge_step)
        return self

    def add(self, row: Row) -> None:
        """Append ROW to the CSV (the header first, on the first row) and to TensorBoard."""
        header = self._columns is None
        if self._columns is None:
            self._columns = list(row)
        if list(row) != self._columns:
            raise ValueError(f"{self.path}: row {list(row)} has other columns than {self._columns}")
        with open(self.path, "a", encoding="utf-8", newline="") as handle:
            handle.write(_csv_text(self._columns, [row], header))
        if self._writer is not None:
            self._scalars(row)

    def _scalars(self, row: Row) -> None:
        step = int(row[self.step]) if self.step else 0
        prefix = self.name if self.group is None else f"{self.name}/{row[self.group]}"
        for key, value in row.items():
            if key not in (self.step, self.group) and isinstance(value, (int, float)):
                self._writer.add_scalar(f"{prefix}/{key}", value, step)
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# train-svm's per-class statistics (heads.svm.train_svms) that go to its report, under their names
# there; the objective is liblinear's primal at the last retrain, as rcnn_train.m prints it
SVM_STATS = ("retrains", "objective", "pos_loss", "neg_loss", "reg_loss")


class SvmReport:
    """train-svm's report: per class, its positives, the hard negatives its cache holds at the
    end and the SVM_STATS the training returned; one log line per class, WORK/reports/<NAME>.csv
    (rewritten by each training) and, with TENSORBOARD, a series per class."""

    def __init__(self, work: WorkDir, name: str, tensorboard: str | Path | None = None) -> None:
        self.metrics = MetricsLog(work, name, tensorboard=tensorboard, group="class")

    @staticmethod
    def rows(
        classes: Sequence[str], positives: Sequence[Sized], stats: Sequence[Mapping[str, Any]]
    ) -> list[dict[str, Any]]:
        """One row per class; POSITIVES[k] holds class k's positive examples."""
        return [
            {
                "class": name,
                "positives": len(examples),
                "hard_negatives": int(entry["cached_negatives"]),
                **{key: entry[key] for key in SVM_STATS if key in entry},
            }
            for name, examples, entry in zip(classes, positives, stats, strict=True)
        ]

    def write(
        self,
        classes: Sequence[str],
        positives: Sequence[Sized],
        stats: Sequence[Mapping[str, Any]],
    ) -> list[dict[str, Any]]:
        """Log and write the rows of the trained SVMs (``rows``); returns them."""
        rows = self.rows(classes, positives, stats)
        with self.metrics.start():
            for row in rows:
                log.info("train-svm %s", describe_svm(row))
                self.metrics.add(row)
        return rows


def describe_svm(row: Row) -> str:
    """One line of an SvmReport row."""
    line = (
        f"{row['class']}: {row['positives']} positives, {row['hard_negatives']} hard negatives "
        f"kept, {row['retrains']} retrains"
    )
    if "objective" in row:
        line += (
            f", objective {row['objective']:.6g} = {row['pos_loss']:.6g} (positives) + "
            f"{row['neg_loss']:.6g} (negatives) + {row['reg_loss']:.6g} (regulariser)"
        )
    return line
