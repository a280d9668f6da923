"""Progress display for long work: silent in a library, a rich bar when the CLI asks for it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

_enabled = False


def set_progress(enabled: bool) -> None:
    """Show (``True``) or hide (``False``) progress bars for long work in this process."""
    global _enabled
    _enabled = bool(enabled)


def progress_enabled() -> bool:
    """Whether progress bars are shown by default."""
    return _enabled


class _Silent:
    def advance(self, amount: int = 1) -> None:
        pass


class _Bar:
    def __init__(self, progress, task) -> None:
        self._progress, self._task = progress, task

    def advance(self, amount: int = 1) -> None:
        self._progress.advance(self._task, amount)


@contextlib.contextmanager
def progress_bar(total: int, description: str, *, enabled: bool | None = None) -> Iterator:
    """Yield an object with ``advance(n)``; draws a transient rich bar when enabled."""
    if not (_enabled if enabled is None else enabled):
        yield _Silent()
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    columns = (
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, transient=True) as progress:
        yield _Bar(progress, progress.add_task(description, total=total))
