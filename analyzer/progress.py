"""Progress of long steps (reading a large file, scanning, profiling), reported to a listener.

The API reports stages; it never draws. The CLI passes a Rich progress bar on stderr
that appears only when a step runs longer than a second, and only on a terminal.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol

__all__ = ["Progress", "NullProgress", "RichProgress"]

Advance = Callable[[int], None]


class Progress(Protocol):
    def stage(self, description: str, total: int | None = None) -> "contextmanager[Advance]":  # type: ignore[valid-type]
        """A context for one step; the yielded function advances it by n units of `total`."""
        ...


class NullProgress:
    @contextmanager
    def stage(self, description: str, total: int | None = None) -> Iterator[Advance]:
        yield lambda n=1: None


class RichProgress:
    """A transient Rich progress bar that shows itself after `delay_s` of one step."""

    def __init__(self, console: object, delay_s: float = 1.0) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, SpinnerColumn, TextColumn, TimeElapsedColumn

        self._bar = Bar(
            SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=console, transient=True,  # type: ignore[arg-type]
        )
        self._delay_s = delay_s
        self._lock = threading.Lock()
        self._shown = False

    @contextmanager
    def stage(self, description: str, total: int | None = None) -> Iterator[Advance]:
        task = self._bar.add_task(description, total=total)
        timer = threading.Timer(self._delay_s, self._show)
        timer.daemon = True
        timer.start()
        try:
            yield lambda n=1: self._bar.advance(task, n)
        finally:
            timer.cancel()
            self._bar.remove_task(task)
            with self._lock:
                if self._shown and not self._bar.tasks:
                    self._bar.stop()
                    self._shown = False

    def _show(self) -> None:
        with self._lock:
            if not self._shown and self._bar.tasks:
                self._bar.start()
                self._shown = True
