"""One progress bar for every long loop (prepare, training's cache, predict, evaluate).

A rich bar on stderr, so stdout stays clean for results and pipes. Disabled bars
cost nothing and print nothing, so callers pass their ``progress`` flag straight in.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


def stderr_console() -> Any:
    """A rich console on stderr (imported lazily: keeps ``unet --help`` fast)."""
    from rich.console import Console

    return Console(stderr=True)


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


@contextlib.contextmanager
def progress_bar(
    total: int, enabled: bool = True, label: str = "working", console: Any = None
) -> Iterator[Advance]:
    """A progress bar; yields the :class:`Advance` that advances it by one step.

    Args:
        total: Number of steps.
        enabled: Show it (False: advancing does nothing visible).
        label: Text before the bar.
        console: A rich console (default: a new one on stderr).
    """
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
    with Progress(
        *columns, console=console or stderr_console(), disable=not enabled, transient=False
    ) as bar:
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
