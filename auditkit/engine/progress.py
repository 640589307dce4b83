"""Progress on long work: bars that count images, on stderr, on a terminal or in Jupyter.

The engine reports to a :class:`ProgressSink`; checks and loops only open a :class:`Task` (through
:meth:`auditkit.engine.loop.Engine.task` or :meth:`~auditkit.engine.loop.Engine.map`) and advance it.
Three sinks:

- :class:`RichSink`: transient rich bars (spinner, description, bar, ``done/total images``, elapsed
  time, ETA) on stderr; a finished task's bar disappears, and :meth:`ProgressSink.note` prints a line
  above the bars (a finished check's headline). Shown on an interactive terminal and in Jupyter
  (with ipywidgets, as rich needs it there). Rich's own environment switches apply: ``TTY_INTERACTIVE=1``
  (or ``FORCE_COLOR``/``TTY_COMPATIBLE=1``) forces the bars where stderr is not a terminal,
  ``TTY_INTERACTIVE=0`` turns them off on one.
- :class:`NullSink`: nothing (``--no-progress``, no terminal, non-zero ranks of a distributed run).
- :class:`RecordingSink`: keeps every task and update in memory (tests, or a caller logging progress).

Progress never goes to stdout, which stays machine-readable. While bars run, lines written to
stderr, or to stdout when it is the same terminal, are printed above the bars rather than under them.
"""

from __future__ import annotations

import datetime as _dt
import os
import sys
from dataclasses import dataclass, field
from typing import Protocol

from rich.console import Console
from rich.file_proxy import FileProxy
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    TaskID,
    TextColumn,
)
from rich.progress import Task as RichTask
from rich.table import Column
from rich.text import Text


class ProgressSink(Protocol):
    """Where progress goes. Task ids are the sink's own; ``completed`` and ``total`` count work units
    (images, or images x perturbations) and only ever grow."""

    def start(self, description: str, total: float, unit: str) -> int:
        """Open a task of ``total`` units; returns its id."""
        ...

    def update(self, task: int, completed: float, description: str | None = None) -> None:
        """``completed`` units of ``task`` are done (cumulative); optionally rename it."""
        ...

    def stop(self, task: int) -> None:
        """The task is over: its bar goes away."""
        ...

    def note(self, line: str) -> None:
        """A line that stays (a finished check's headline), printed above any bars."""
        ...


class NullSink:
    """Shows nothing."""

    def start(self, description: str, total: float, unit: str) -> int:
        return 0

    def update(self, task: int, completed: float, description: str | None = None) -> None:
        pass

    def stop(self, task: int) -> None:
        pass

    def note(self, line: str) -> None:
        pass


@dataclass
class RecordedTask:
    """One task as a :class:`RecordingSink` saw it: every ``completed`` value reported, in order."""

    description: str
    total: float
    unit: str
    updates: list[float] = field(default_factory=list)
    descriptions: list[str] = field(default_factory=list)
    stopped: bool = False

    @property
    def completed(self) -> float:
        return self.updates[-1] if self.updates else 0.0


class RecordingSink:
    """Keeps every task, update and note in memory, in order."""

    def __init__(self) -> None:
        self.tasks: list[RecordedTask] = []
        self.notes: list[str] = []
        self.open_now = 0
        self.most_open = 0  # the most tasks open at once (rows on screen)

    def start(self, description: str, total: float, unit: str) -> int:
        self.tasks.append(RecordedTask(description, total, unit, descriptions=[description]))
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        return len(self.tasks) - 1

    def update(self, task: int, completed: float, description: str | None = None) -> None:
        t = self.tasks[task]
        if completed != t.completed:
            t.updates.append(completed)
        if description is not None:
            t.descriptions.append(description)
            t.description = description

    def stop(self, task: int) -> None:
        self.tasks[task].stopped = True
        self.open_now -= 1

    def note(self, line: str) -> None:
        self.notes.append(line)

    def named(self, prefix: str) -> list[RecordedTask]:
        """The tasks whose (first) description starts with ``prefix``."""
        return [t for t in self.tasks if t.descriptions[0].startswith(prefix)]


def remaining_seconds(elapsed: float | None, completed: float, total: float | None) -> float | None:
    """Time left at the average rate so far (known from the first reported unit on), or ``None``."""
    if elapsed is None or total is None or completed <= 0 or elapsed <= 0:
        return None
    return max(0.0, elapsed * (total - completed) / completed)


def _clock(seconds: float) -> str:
    return str(_dt.timedelta(seconds=round(seconds)))


class RichSink:
    """Transient rich bars on ``console`` (stderr by default): one row per open task, removed when the
    task stops; the live display runs only while a task is open."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.progress: Progress | None = None
        self._redirected: list[tuple[str, object, _Proxy]] = []
        #: notes printed on the terminal that stdout also writes to (the final summary skips them)
        self.shown_on_stdout: list[str] = []

    def _display(self) -> Progress:
        if self.progress is not None:
            return self.progress
        # a wide terminal gets fixed widths; a narrow one shares its width out, cutting descriptions first
        narrow = self.console.width < 110
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn(
                "{task.description}",
                markup=False,
                table_column=Column(
                    no_wrap=True, overflow="ellipsis", ratio=3 if narrow else None, max_width=None if narrow else 44
                ),
            ),
            BarColumn(bar_width=None if narrow else 24, table_column=Column(ratio=1) if narrow else None),
            CountColumn(table_column=Column(no_wrap=True)),
            TimeColumn(table_column=Column(no_wrap=True)),
            console=self.console,
            expand=narrow,
            transient=True,
            refresh_per_second=8,
            redirect_stdout=False,  # done by _redirect, which also works for click (typer.echo)
            redirect_stderr=False,
        )
        self.progress.start()
        self._redirect()
        return self.progress

    def _redirect(self) -> None:
        """While bars run, lines written to sys.stderr, or to sys.stdout when it is the same terminal,
        are printed above the bars (through the console) instead of being overwritten by them. A
        stdout that is not the bars' terminal (a pipe, a file) is never touched."""
        if self.console.is_jupyter:
            return
        for name in ("stderr", "stdout"):
            stream = getattr(sys, name)
            if not isinstance(stream, FileProxy) and _same_terminal(stream, self.console.file):
                proxy = _Proxy(self.console, stream)
                setattr(sys, name, proxy)
                self._redirected.append((name, stream, proxy))

    def _restore(self) -> None:
        while self._redirected:
            name, stream, proxy = self._redirected.pop()
            proxy.flush()
            if getattr(sys, name) is proxy:
                setattr(sys, name, stream)

    def start(self, description: str, total: float, unit: str) -> int:
        return int(self._display().add_task(description, total=total, unit=unit))

    def update(self, task: int, completed: float, description: str | None = None) -> None:
        if self.progress is not None:
            if description is None:
                self.progress.update(TaskID(task), completed=completed)
            else:
                self.progress.update(TaskID(task), completed=completed, description=description)

    def stop(self, task: int) -> None:
        if self.progress is None:
            return
        self.progress.remove_task(TaskID(task))
        if not self.progress.tasks:
            self._restore()
            self.progress.stop()
            self.progress = None

    def note(self, line: str) -> None:
        self.console.print(line, markup=False, highlight=False, soft_wrap=True)
        if _same_terminal(sys.__stdout__, self.console.file):
            self.shown_on_stdout.append(line)


class _Proxy(FileProxy):
    """rich's FileProxy with the wrapped file's encoding: click (typer.echo) checks it and, finding
    none on rich's own proxy, writes to the file's buffer, around the proxy and under the bars."""

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return str(getattr(self.rich_proxied_file, "encoding", None) or "utf-8")

    @property
    def errors(self) -> str | None:  # type: ignore[override]
        return getattr(self.rich_proxied_file, "errors", None)


def _same_terminal(stream: object, other: object) -> bool:
    """Whether ``stream`` and ``other`` are both the same terminal device."""
    try:
        if not (stream.isatty() and other.isatty()):  # type: ignore[attr-defined]
            return False
        a, b = os.fstat(stream.fileno()), os.fstat(other.fileno())  # type: ignore[attr-defined]
    except (AttributeError, ValueError, OSError):
        return False
    return (a.st_dev, a.st_ino, a.st_rdev) == (b.st_dev, b.st_ino, b.st_rdev)


class CountColumn(ProgressColumn):
    """``done/total unit``, e.g. ``1,234/5,000 images``."""

    def render(self, task: RichTask) -> Text:
        total = f"{task.total:,.0f}" if task.total is not None else "?"
        unit = task.fields.get("unit", "")
        return Text(f"{int(task.completed):,}/{total} {unit}".rstrip(), style="progress.download")


class TimeColumn(ProgressColumn):
    """``elapsed ETA left``: the time left at the average rate since the task started, shown from the
    first update on (rich's own column waits for several samples, so a one-batch task never had one)."""

    def render(self, task: RichTask) -> Text:
        left = remaining_seconds(task.elapsed, task.completed, task.total)
        text = Text(_clock(task.elapsed or 0.0), style="progress.elapsed")
        text.append(f" ETA {_clock(left) if left is not None else '-:--:--'}", style="progress.remaining")
        return text


def terminal_sink(enabled: bool = True) -> ProgressSink:
    """The sink for ``--progress``: rich bars on stderr when it is an interactive terminal, or in
    Jupyter when ipywidgets is installed (rich renders bars there with it); otherwise nothing."""
    if not enabled:
        return NullSink()
    console = Console(stderr=True)
    if console.is_jupyter:
        try:
            import ipywidgets  # noqa: F401
        except ImportError:
            return NullSink()
        return RichSink(console)
    return RichSink(console) if console.is_interactive else NullSink()


class Task:
    """One bar: ``total`` units (images, or images x perturbations); :meth:`advance` or :meth:`update`
    as work finishes. ``completed`` only grows (a retried batch does not move the bar back)."""

    def __init__(self, sink: ProgressSink, description: str, total: float, unit: str = "images") -> None:
        self.sink = sink
        self.description = description
        self.total = float(total)
        self.unit = unit
        self.completed = 0.0
        self._id = sink.start(description, self.total, unit)
        self._open = True

    def advance(self, units: float) -> None:
        """``units`` more are done."""
        self.update(self.completed + units)

    def update(self, completed: float) -> None:
        """``completed`` units are done in all (ignored if it is not more than already reported)."""
        if completed > self.completed and self._open:
            self.completed = completed
            self.sink.update(self._id, completed)

    def describe(self, description: str) -> None:
        """Rename the bar (e.g. ``epoch 3/10``)."""
        self.description = description
        if self._open:
            self.sink.update(self._id, self.completed, description)

    def close(self) -> None:
        if self._open:
            self._open = False
            self.sink.stop(self._id)
