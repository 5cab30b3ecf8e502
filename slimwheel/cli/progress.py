"""A byte-counting progress bar on stderr, shown only on a terminal."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

Advance = Callable[[int, str], None]


@contextmanager
def byte_progress(total: int, *, enabled: bool = True) -> Iterator[Advance]:
    """Yield ``advance(nbytes, label)``; draws nothing unless stderr is a terminal."""
    if not (enabled and sys.stderr.isatty()):
        yield lambda n, label: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (
        TextColumn("{task.description}", table_column=None),
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("scanning", total=total)

        def advance(n: int, label: str) -> None:
            bar.update(task, advance=n, description=label[-40:])

        yield advance


class WheelProgress:
    """One bar per wheel and one for everything, in library bytes (build)."""

    def __init__(self, bar: Progress | None) -> None:  # rich's Progress
        self.bar = bar
        self.tasks: dict[str, TaskID] = {}
        self.total = bar.add_task("all wheels", total=0) if bar else None

    def start(self, wheel: str, total: int) -> None:
        if self.bar is None or self.total is None or not total:
            return
        self.tasks[wheel] = self.bar.add_task(os.path.basename(wheel)[:40], total=total)
        self.bar.update(self.total, total=(self.bar.tasks[self.total].total or 0) + total)

    def advance(self, wheel: str, member: str, nbytes: int) -> None:
        if self.bar is None or self.total is None:
            return
        if wheel in self.tasks:
            self.bar.update(self.tasks[wheel], advance=nbytes)
        self.bar.update(self.total, advance=nbytes, description=member.rsplit("/", 1)[-1][:40])


@contextmanager
def wheel_progress(*, enabled: bool = True) -> Iterator[WheelProgress]:
    if not (enabled and sys.stderr.isatty()):
        yield WheelProgress(None)
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        yield WheelProgress(bar)
