"""A byte-counting progress bar on stderr, shown only on a terminal."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)

Advance = Callable[[int, str], None]


@contextmanager
def byte_progress(total: int, *, enabled: bool = True) -> Iterator[Advance]:
    """Yield ``advance(nbytes, label)``; draws nothing unless stderr is a terminal."""
    if not (enabled and sys.stderr.isatty()):
        yield lambda n, label: None
        return
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
