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


@contextlib.contextmanager
def progress_bar(
    total: int, enabled: bool = True, label: str = "working", console: Any = None
) -> Iterator[Callable[[], None]]:
    """A progress bar; yields the function that advances it by one step.

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

    columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(
        *columns, console=console or stderr_console(), disable=not enabled, transient=False
    ) as bar:
        task = bar.add_task(label, total=total)
        yield lambda: bar.advance(task)


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
