"""Consoles and progress displays that read well in a terminal and in a log.

In a terminal: rich's colours, tables fitted to the window, live progress bars. Piped to a
file or a CI log: no colour codes, result lines as long as they are (not wrapped at 80
columns), and instead of a live bar a plain progress line every few seconds, as pip and
Ultralytics print. ``NO_COLOR`` turns colours off anywhere (rich honours it); ``COLUMNS``
sets the width when given.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console

# A log line is never wrapped below this (rich's default without a terminal is 80).
_LOG_WIDTH = 1000
# Seconds between two plain progress lines of one task.
PLAIN_PROGRESS_SECONDS = 10.0


def make_console(stderr: bool = False) -> Console:
    """A console for stdout (or stderr): wrapped to the terminal, or unwrapped in a log."""
    stream = sys.stderr if stderr else sys.stdout
    try:
        interactive = stream.isatty()
    except (AttributeError, ValueError):  # a closed or replaced stream
        interactive = False
    if interactive or "COLUMNS" in os.environ:
        return Console(stderr=stderr)
    return Console(stderr=stderr, width=_LOG_WIDTH, no_color=True)


# Shorter spans than this print no rate: the first item's time is not in them.
MIN_RATE_SECONDS = 0.1


def make_progress(*columns: Any, console: Console, transient: bool = False) -> Any:
    """rich's live ``Progress(*columns)`` on a terminal, else a :class:`PlainProgress`."""
    if console.is_terminal:
        from rich.progress import Progress

        return Progress(*columns, console=console, transient=transient)
    return PlainProgress(console)


@dataclass
class _Task:
    description: str
    total: float | None
    completed: float = 0
    fields: dict[str, Any] = field(default_factory=dict)
    initial: float = 0  # completed when added (a resumed run): not counted in the rate
    started: float = field(default_factory=time.perf_counter)
    printed_at: float = float("-inf")  # the first update prints a line
    printed: float = -1  # ``completed`` at the last line


class PlainProgress:
    """The part of ``rich.progress.Progress`` the commands use, as plain lines: one per task
    every :data:`PLAIN_PROGRESS_SECONDS`, and one when it completes or the display stops,
    e.g. ``detect 120/1000 (12%) 3.1 img/s ETA 4:43 failed 0``."""

    def __init__(self, console: Console, every: float = PLAIN_PROGRESS_SECONDS) -> None:
        self.console = console
        self.every = every
        self._tasks: list[_Task] = []

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self) -> None:
        pass

    def stop(self) -> None:
        # A task that never moved (the run stopped at an error before its first item) prints
        # nothing: the error is the run's one line.
        for task in self._tasks:
            if task.completed != task.printed and task.completed != task.initial:
                self._print(task)

    def add_task(
        self, description: str, total: float | None = None, completed: float = 0, **fields: Any
    ) -> int:
        self._tasks.append(_Task(description, total, completed, dict(fields), initial=completed))
        return len(self._tasks) - 1

    def advance(self, task_id: int, advance: float = 1) -> None:
        self.update(task_id, advance=advance)

    def update(
        self,
        task_id: int,
        *,
        advance: float | None = None,
        completed: float | None = None,
        total: float | None = None,
        description: str | None = None,
        **fields: Any,
    ) -> None:
        task = self._tasks[task_id]
        if total is not None:
            task.total = total
        if description is not None:
            task.description = description
        if completed is not None:
            task.completed = completed
        if advance is not None:
            task.completed += advance
        task.fields.update(fields)
        now = time.perf_counter()
        done = task.total is not None and task.completed >= task.total
        if (done or now - task.printed_at >= self.every) and task.completed != task.printed:
            self._print(task)

    def _print(self, task: _Task) -> None:
        task.printed_at, task.printed = time.perf_counter(), task.completed
        elapsed = max(task.printed_at - task.started, 1e-9)
        unit = task.fields.get("unit", "it")
        rate = (task.completed - task.initial) / elapsed
        parts = [f"{task.description} {task.completed:g}" + (f"/{task.total:g}" if task.total else "")]
        if task.total:
            parts.append(f"({100 * task.completed / task.total:.0f}%)")
        if elapsed >= MIN_RATE_SECONDS:  # a rate over microseconds (157505 img/s) says nothing
            parts.append(f"{rate:.2f} {unit}/s")
        if task.total and rate > 0 and task.completed < task.total:
            left = int((task.total - task.completed) / rate)
            parts.append(f"ETA {left // 60}:{left % 60:02d}")
        if "failed" in task.fields:
            parts.append(f"failed {task.fields['failed']}")
        if task.fields.get("status"):
            parts.append(str(task.fields["status"]))
        self.console.print(" ".join(parts), markup=False, highlight=False, soft_wrap=True)
