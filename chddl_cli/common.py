"""What every subcommand shares: global options, errors, progress, output."""

from __future__ import annotations

import functools
import json
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from stages.api import Result, Workspace, open_workspace
from stages.errors import ChddlError

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)
if not console.is_terminal:  # a pipe or a file: no folding at 80 columns (tables stay whole, paths unbroken)
    console.width = max(console.width, 200)

JSON_OPTION = typer.Option(
    "--json", help="print one JSON object (artifact paths, metrics, cost) on stdout and nothing else"
)


def print_table(table: Table) -> None:
    """A table with its title on a line of its own, so a title wider than the table never wraps mid-phrase."""
    title, table.title = table.title, None
    if title:
        console.print(str(title), soft_wrap=True, markup=False, style="italic")
    console.print(table)


def result_line(label: str, path: object) -> None:
    """The final ``label: PATH`` line scripts read: never wrapped or cut."""
    console.print(f"{label}: {path}", soft_wrap=True, markup=False)


def artifact_json(art, hit: bool | None = None) -> dict:
    """What ``--json`` reports of an artifact."""
    out = {
        "artifact": str(art.path),
        "name": art.name,
        "stage": art.stage,
        "metrics": art.metrics,
        "cost": art.meta.get("cost", {}),
    }
    return out if hit is None else out | {"cache_hit": hit}


def print_json(payload: dict) -> None:
    """One JSON object on stdout (the library's notes and progress go to stderr)."""
    typer.echo(json.dumps(payload, default=str))


@dataclass
class Globals:
    """Options given before the subcommand (``chddl --workdir W label ...``)."""

    workdir: Path
    device: str
    seed: int
    verbose: int
    quiet: bool
    wait: bool = True
    opened: list[Workspace] = field(default_factory=list)

    def workspace(self) -> Workspace:
        """The workspace these options name; its index changes when the command succeeds."""
        ws = open_workspace(self.workdir, wait=self.wait, defer_index=True)
        self.opened.append(ws)
        return ws

    def commit(self) -> None:
        for ws in self.opened:
            ws.commit()


def globals_of(ctx: typer.Context) -> Globals:
    return ctx.find_root().obj


def error(message: str) -> None:
    """Print a one-line error to stderr."""
    err_console.print(Text.assemble(("error: ", "bold red"), message.replace("\n", " ")), soft_wrap=True)


class _NoteHandler(logging.Handler):
    """The library's one-line notes (logger ``chddl``), as ``note: ...`` on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        err_console.print(Text.assemble(("note: ", "yellow"), record.getMessage().replace("\n", " ")), soft_wrap=True)


def show_library_notes(verbose: int) -> None:
    """Print the library's warnings (and with -v its debug notes) on stderr, once."""
    logger = logging.getLogger("chddl")
    if not any(isinstance(h, _NoteHandler) for h in logger.handlers):
        logger.addHandler(_NoteHandler())
    logger.setLevel(logging.DEBUG if verbose > 1 else logging.INFO)
    logger.propagate = False


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised as an interruption so long stages checkpoint on the way out."""


def guarded(fn: Callable) -> Callable:
    """Turn ChddlError into a one-line message and exit code 1; Ctrl-C into 130, SIGTERM into 143 (128 + signal)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            result = fn(*args, **kwargs)
            ctx = kwargs.get("ctx") or next((a for a in args if isinstance(a, typer.Context)), None)
            if ctx is not None and isinstance(ctx.find_root().obj, Globals):
                globals_of(ctx).commit()  # the index changes only once the command has succeeded
            return result
        except ChddlError as exc:
            error(str(exc))
            raise typer.Exit(1) from None
        except KeyboardInterrupt as exc:
            stopped = "terminated" if isinstance(exc, Terminated) else "interrupted"
            error(f"{stopped}; nothing complete was lost, re-run the same command to resume")
            raise typer.Exit(143 if isinstance(exc, Terminated) else 130) from None

    return wrapper


class _RichTask:
    def __init__(self, bar: Progress, task_id: int, log: "_PlainLog | None") -> None:
        self.bar, self.task_id, self.log = bar, task_id, log

    def advance(self, steps: int = 1, **fields: object) -> None:
        info = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in fields.items())
        self.bar.update(self.task_id, advance=steps, info=info)
        if self.log is not None:
            self.log.advance(steps, info)


class _PlainLog:
    """Progress for logs (stderr not a terminal, where bars do not draw): a
    plain line every ``every`` seconds and at the end, with rate and ETA."""

    def __init__(self, description: str, total: int | None, done: int = 0, every: float = 30.0) -> None:
        self.description, self.total, self.every = description, total, every
        self.done, self.info = done, ""
        self.resumed = done  # finished before this process: not part of its rate
        self.start = self.last = time.monotonic()

    def advance(self, steps: int, info: str) -> None:
        self.done, self.info = self.done + steps, info
        if time.monotonic() - self.last >= self.every:
            self.line()

    def line(self, final: bool = False) -> None:
        self.last = now = time.monotonic()
        rate = (self.done - self.resumed) / max(now - self.start, 1e-9)
        of = f"/{self.total}" if self.total else ""
        eta = f", ETA {_duration((self.total - self.done) / rate)}" if self.total and rate > 0 and not final else ""
        state = "done" if final else f"{rate:.3g}/s{eta}"
        err_console.print(
            f"{self.description}: {self.done}{of} ({state}, {_duration(now - self.start)} elapsed)"
            + (f"  {self.info}" if self.info else ""),
            soft_wrap=True,
            highlight=False,
        )


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"
    )


class RichProgress:
    """The stages' Progress callback drawn with rich (one live display, many tasks)."""

    def __init__(self, enabled: bool = True, verbose: int = 0) -> None:
        self.enabled, self.verbose = enabled, verbose
        self._bar: Progress | None = None
        self._open = 0

    @contextmanager
    def task(self, description: str, total: int | None = None, done: int = 0) -> Iterator[_RichTask]:
        if self._bar is None:
            self._bar = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
                console=err_console,
                disable=not self.enabled,
                transient=True,
            )
            self._bar.start()
        self._open += 1
        # rich estimates speed from advances only: the resumed steps are a starting point, not a burst of speed
        task_id = self._bar.add_task(description, total=total, completed=done, info="")
        log = _PlainLog(description, total, done) if self.enabled and not err_console.is_terminal else None
        try:
            yield _RichTask(self._bar, task_id, log)
            if log is not None:
                log.line(final=True)
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


def run_stage(ctx: typer.Context, stage: Callable, *args: object, **kwargs: object) -> tuple[Result, RichProgress]:
    """Call a library stage (``api.condense``, ...) with the global options filled in: the
    workspace, device, default seed and a progress display. Returns its result and the display."""
    g = globals_of(ctx)
    progress = progress_for(g)
    kwargs |= {"workspace": g.workspace(), "device": g.device, "default_seed": g.seed, "progress": progress}
    return stage(*args, **kwargs), progress


def note_done(progress: RichProgress, what: str, res: Result, redo: str = "recompute") -> None:
    """``condensed NAME: done`` or ``...: cached - skipping (use --force to REDO)``."""
    hit = "cached - skipping (use --force to " + redo + ")"
    progress.note(f"{what} {res.artifact.name}: " + (hit if res.cache_hit else "done"))


def plural(n: int, word: str) -> str:
    """``1 run``, ``3 runs``, ``2 processes``."""
    return f"{n} {word}" if n == 1 else f"{n} {word}{'es' if word.endswith('s') else 's'}"


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
