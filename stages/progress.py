"""How stages report progress without printing: a callback object.

The CLI passes a rich-backed implementation; library users and tests get
:class:`NullProgress`, which does nothing.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, contextmanager
from typing import Iterator, Protocol


class Task(Protocol):
    """One unit of long work with a known or unknown total."""

    def advance(self, steps: int = 1, **fields: object) -> None:
        """Mark ``steps`` more done; ``fields`` are shown beside the bar (e.g. loss)."""


class Progress(Protocol):
    """Receiver of progress events from a stage."""

    def task(self, description: str, total: int | None = None, done: int = 0) -> AbstractContextManager[Task]:
        """Context manager for a task; the bar closes when the block ends. ``done`` steps were finished before
        this process started (a resumed run): they count towards the total, not towards the rate or ETA."""

    def note(self, message: str) -> None:
        """A one-line informational message (cache hits, skipped files, ...)."""


class _NullTask:
    def advance(self, steps: int = 1, **fields: object) -> None:
        pass


class NullProgress:
    """A Progress that reports nothing."""

    @contextmanager
    def task(self, description: str, total: int | None = None, done: int = 0) -> Iterator[Task]:
        yield _NullTask()

    def note(self, message: str) -> None:
        pass
