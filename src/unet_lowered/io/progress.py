"""One progress bar for every long loop (prepare, training's cache, predict, evaluate),
and :func:`status` for a long step without one (planning, plotting, exporting).

A rich bar on stderr, so stdout stays clean for results and pipes. Disabled bars
cost nothing and print nothing, so callers pass their ``progress`` flag straight in.
When stderr is not a terminal (a log file under nohup, cron or CI), where a rich bar
shows nothing until the end, plain lines say how far the work is: at the start, every
:data:`LOG_EVERY_S` seconds, and at the end.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


def stderr_console() -> Any:
    """A rich console on stderr (imported lazily: keeps ``unet --help`` fast)."""
    from rich.console import Console

    return Console(stderr=True)


def status(line: str) -> None:
    """Say on stderr, in one plain line, what a long step that shows no bar is doing
    (``planning DATA: ...``); stdout stays for the results."""
    stderr_console().print(line, markup=False, highlight=False, soft_wrap=True)


LOG_EVERY_S = 30.0
"""Seconds between two progress lines in a log (stderr not a terminal)."""


PART_MIN = 50
"""Parts (tiles) an item needs before :meth:`Advance.part` shows a line of its own: a
second's work or more, so small items do not flicker a line on and off."""


class Advance:
    """What :func:`progress_bar` yields: calling it advances the bar by one step;
    :meth:`part` follows the parts of one long step (the tiles of a huge image)."""

    def __init__(self, bar: Any, task: Any):
        self._bar, self._task = bar, task

    def __call__(self) -> None:
        self._bar.advance(self._task)

    def part(self, label: str) -> Callable[[int, int], None]:
        """A ``(done, total)`` callback for the parts of the current step: a second line
        ``label`` counting them once ``total`` reaches :data:`PART_MIN`, removed when
        ``done`` reaches ``total``. Safe from any thread (rich's bars lock)."""
        task: list[Any] = []

        def update(done: int, total: int) -> None:
            if total < PART_MIN:
                return
            if not task:
                task.append(self._bar.add_task(label, total=total))
            self._bar.update(task[0], completed=done)
            if done >= total:
                self._bar.remove_task(task[0])

        return update


class LogAdvance(Advance):
    """:class:`Advance` for a log: a plain line ``label: done/total, N s`` at the start,
    at most every :data:`LOG_EVERY_S` seconds, and at the end; the parts of a long step
    (tiles) on lines of their own, as often."""

    def __init__(self, console: Any, label: str, total: int):
        self._console, self._label, self._total, self._done = console, label, total, 0
        self._start = self._last = time.monotonic()
        self._say(f"{label}: 0/{total}")

    def _say(self, line: str) -> None:
        self._console.print(line, markup=False, highlight=False, soft_wrap=True)

    def _elapsed(self, now: float) -> str:
        return f"{now - self._start:.0f} s"

    def __call__(self) -> None:
        self._done += 1
        now = time.monotonic()
        if self._done == self._total or now - self._last >= LOG_EVERY_S:
            self._last = now
            self._say(f"{self._label}: {self._done}/{self._total}, {self._elapsed(now)}")

    def part(self, label: str) -> Callable[[int, int], None]:
        def update(done: int, total: int) -> None:
            now = time.monotonic()
            if total >= PART_MIN and done < total and now - self._last >= LOG_EVERY_S:
                self._last = now
                self._say(f"{label}: {done}/{total}, {self._elapsed(now)}")

        return update


@contextlib.contextmanager
def progress_bar(
    total: int, enabled: bool = True, label: str = "working", console: Any = None
) -> Iterator[Advance]:
    """A progress bar; yields the :class:`Advance` that advances it by one step.

    Args:
        total: Number of steps.
        enabled: Show it (False: advancing does nothing visible).
        label: Text before the bar.
        console: A rich console (default: a new one on stderr). Not a terminal: plain
            lines instead of a bar (:class:`LogAdvance`).
    """
    console = console or stderr_console()
    if enabled and not console.is_terminal:
        yield LogAdvance(console, label, total)
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, disable=not enabled, transient=False) as bar:
        yield Advance(bar, bar.add_task(label, total=total))


def track(
    items: Iterable[T], total: int, enabled: bool = True, label: str = "working"
) -> Iterator[T]:
    """Iterate over ``items`` while a :func:`progress_bar` counts them."""
    if not enabled or not total:
        yield from items
        return
    with progress_bar(total, enabled, label) as advance:
        for item in items:
            yield item
            advance()
