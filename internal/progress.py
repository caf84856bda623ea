"""Progress bars for the tools (convert.py, render.py): one look, with the rate in the tool's unit.

    with progress_bar("features", total=23, unit="image") as bar:
        bar.update(completed=n)          # or bar.advance()

On a terminal the bar redraws in place (on stderr, so stdout stays for results); elsewhere (logs, pytest)
only the final state is printed, once.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterator, Optional

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text


class _RateColumn(ProgressColumn):
    """'12.3 frames/s' from rich's running speed estimate (blank until there is one)."""

    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        if not speed:
            return Text("")
        return Text(f"{speed:.2f} {self.unit}s/s" if speed < 10 else f"{speed:.1f} {self.unit}s/s", style="progress.data.speed")


class Bar:
    def __init__(self, progress: Progress, task):
        self._progress, self._task = progress, task

    def update(self, completed: Optional[float] = None, total: Optional[float] = None, description: Optional[str] = None) -> None:
        kw = {}
        if completed is not None:
            kw["completed"] = completed
        if total is not None:
            kw["total"] = total
        if description is not None:
            kw["description"] = description
        self._progress.update(self._task, **kw)

    def advance(self, n: float = 1) -> None:
        self._progress.advance(self._task, n)


def console() -> Console:
    """The console the tools print their progress and summaries on (stderr)."""
    return Console(file=sys.stderr, highlight=False, soft_wrap=True)  # long paths stay on one line in logs


@contextmanager
def progress_bar(description: str, total: Optional[float], unit: str = "item", out: Optional[Console] = None) -> Iterator[Bar]:
    """A progress bar for one piece of work. `total=None` shows a spinner with the count so far."""
    columns = [SpinnerColumn(), TextColumn("{task.description}")]
    columns += [BarColumn(), MofNCompleteColumn()] if total is not None else [TextColumn("{task.completed:.0f} " + unit + "s")]
    columns += [_RateColumn(unit), TimeElapsedColumn()]
    if total is not None:
        columns.append(TimeRemainingColumn())
    with Progress(*columns, console=out or console(), transient=False) as progress:
        task = progress.add_task(description, total=total)
        yield Bar(progress, task)


__all__ = ["progress_bar", "console", "Bar"]
