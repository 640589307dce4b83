"""Progress bars for long loops (rich), written to stderr so stdout stays machine-readable."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

T = TypeVar("T")

_console = Console(stderr=True)


def track(iterable: Iterable[T], total: int, description: str, *, enabled: bool = True) -> Iterator[T]:
    """Yield from ``iterable`` while showing a progress bar of ``total`` steps."""
    if not enabled or total <= 1:
        yield from iterable
        return
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=_console,
        transient=False,
        disable=not _console.is_terminal,
    )
    with progress:
        task = progress.add_task(description, total=total)
        for item in iterable:
            yield item
            progress.advance(task)
