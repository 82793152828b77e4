"""Progress bars with ETA and an items/s readout, for every long stage.

Bars are drawn on stderr: stdout carries a command's results only, so that it can be piped.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

T = TypeVar("T")


class _RateColumn(ProgressColumn):
    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.2f} {self.unit}/s" if speed else f"-- {self.unit}/s")


class Bar:
    """A running bar: ``advance(n)`` as work completes."""

    def __init__(self, progress: Progress, task_id: int) -> None:
        self._progress = progress
        self._task_id = task_id

    def advance(self, n: float = 1) -> None:
        self._progress.advance(self._task_id, n)

    def note(self, text: str) -> None:
        self._progress.update(self._task_id, description=text)


@contextmanager
def progress_bar(total: float, description: str, unit: str = "img") -> Iterator[Bar]:
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _RateColumn(unit),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    # Results printed on stdout meanwhile (e.g. detect's JSON lines) go around the bar through
    # rich, which writes them to the bar's console (stderr): only when stdout is the terminal
    # too, so that they show above the bar there. Piped or redirected, stdout is left alone.
    on_screen = sys.stdout is not None and sys.stdout.isatty()
    bars = Progress(
        *columns, console=Console(stderr=True), transient=False, redirect_stdout=on_screen
    )
    with bars as progress:
        yield Bar(progress, progress.add_task(description, total=total))


def track(items: Iterable[T], total: int, description: str, unit: str = "img") -> Iterator[T]:
    with progress_bar(total, description, unit) as bar:
        for item in items:
            yield item
            bar.advance()
