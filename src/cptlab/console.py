"""One rich console for the whole program, and progress bars that `--quiet` silences."""

from __future__ import annotations

import os
import sys

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)
_quiet = bool(os.environ.get("CPTLAB_QUIET"))


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = quiet


def is_quiet() -> bool:
    return _quiet


def log(message: str) -> None:
    """A line for the user on stderr (stdout stays for results: tables, JSON)."""
    if not _quiet:
        console.print(message)


def progress(*extra_columns, transient: bool = False) -> Progress:
    """A progress bar with elapsed time and ETA; disabled under --quiet or when stderr is not a terminal."""
    disable = _quiet or not sys.stderr.isatty()
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *extra_columns,
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=disable,
        transient=transient,
    )
