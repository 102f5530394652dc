"""What a client shows while a round runs: on a terminal, a bar for the download, the local
training and the upload; in a log file, nothing while it runs (the round's one summary line is
the client loop's). Bars are rich's (already the CLI's table library), drawn on stderr; while
one is drawn, rich takes stderr over and the log lines (whose handler writes to the current
stderr, deploy/cli.py) print above it. They are off unless stderr is a terminal; a caller
that passes no bars (tests, the torchrun followers) gets the no-op ones."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn, TransferSpeedColumn)

Advance = Callable[[int], None]  # how many units are done so far


def _ignore(done: int) -> None:
    return None


class Bars:
    """One bar per stage of a round; ``stage`` yields the function the stage reports to."""

    def __init__(self, console: Console | None):
        self._console = console

    @classmethod
    def for_stderr(cls) -> "Bars":
        """Bars where stderr is a terminal, none where it is a file or a pipe."""
        return cls(Console(stderr=True) if sys.stderr.isatty() else None)

    @property
    def shown(self) -> bool:
        return self._console is not None

    @contextmanager
    def stage(self, label: str, total: int, unit: str = "bytes") -> Iterator[Advance]:
        """A bar for ``total`` units (``bytes``, shown with rate, or ``steps``), left on
        the terminal when the stage ends, so a round leaves its three finished bars."""
        if self._console is None or total <= 0:
            yield _ignore
            return
        amounts = ((DownloadColumn(), TransferSpeedColumn()) if unit == "bytes"
                   else (MofNCompleteColumn(), TextColumn(unit)))
        with Progress(TextColumn("{task.description}"), BarColumn(), *amounts, TimeElapsedColumn(),
                      console=self._console) as bar:
            task = bar.add_task(label, total=total)
            yield lambda done: bar.update(task, completed=done)


NO_BARS = Bars(None)
