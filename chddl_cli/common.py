"""What every subcommand shares: global options, errors, progress, output."""

from __future__ import annotations

import functools
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text

from stages.errors import ChddlError

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


@dataclass
class Globals:
    """Options given before the subcommand (``chddl --workdir W label ...``)."""

    workdir: Path
    device: str
    seed: int
    verbose: int
    quiet: bool


def globals_of(ctx: typer.Context) -> Globals:
    return ctx.find_root().obj


def error(message: str) -> None:
    """Print a one-line error to stderr."""
    err_console.print(Text.assemble(("error: ", "bold red"), message.replace("\n", " ")), soft_wrap=True)


def guarded(fn: Callable) -> Callable:
    """Turn ChddlError into a one-line message and exit code 1; Ctrl-C into 130."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ChddlError as exc:
            error(str(exc))
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            error("interrupted; nothing complete was lost, re-run the same command to resume")
            raise typer.Exit(130) from None

    return wrapper


class _RichTask:
    def __init__(self, bar: Progress, task_id: int) -> None:
        self.bar, self.task_id = bar, task_id

    def advance(self, steps: int = 1, **fields: object) -> None:
        info = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in fields.items())
        self.bar.update(self.task_id, advance=steps, info=info)


class RichProgress:
    """The stages' Progress callback drawn with rich (one live display, many tasks)."""

    def __init__(self, enabled: bool = True, verbose: int = 0) -> None:
        self.enabled, self.verbose = enabled, verbose
        self._bar: Progress | None = None
        self._open = 0

    @contextmanager
    def task(self, description: str, total: int | None = None) -> Iterator[_RichTask]:
        if self._bar is None:
            self._bar = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                                 console=err_console, disable=not self.enabled, transient=True)
            self._bar.start()
        self._open += 1
        task_id = self._bar.add_task(description, total=total, info="")
        try:
            yield _RichTask(self._bar, task_id)
        finally:
            self._bar.remove_task(task_id)
            self._open -= 1
            if self._open == 0:
                self._bar.stop()
                self._bar = None

    def note(self, message: str) -> None:
        if self.enabled:
            err_console.print(message, soft_wrap=True)


def progress_for(g: Globals) -> RichProgress:
    return RichProgress(enabled=not g.quiet, verbose=g.verbose)


def human_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def cost_line(cost: dict) -> str:
    """Wall time (with the time of any interrupted runs it resumed) and peak memory."""
    def seconds(x: float) -> str:
        return f"{x:.2f} s" if x < 10 else f"{x:.1f} s"

    line = seconds(cost.get("wall_s", 0))
    if cost.get("earlier_wall_s"):
        line += f" ({seconds(cost['wall_s_total'])} with the earlier run it resumed or continued)"
    line += f", peak RSS {human_bytes(cost.get('peak_rss_bytes'))}"
    return line + (f", peak CUDA {human_bytes(cost['peak_cuda_bytes'])}" if cost.get("peak_cuda_bytes") else "")
