"""The ``chddl`` Typer application: global options and the subcommand table."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Annotated, Optional

import torch
import typer

from chddl_cli import condense, demo, evaluate, export, label, pretrain_experts, report, teacher
from chddl_cli.common import Globals, Terminated, error, show_library_notes
from chddl_cli.help import SectionedCommand
from stages import __version__
from stages.allocator import keep_freed_memory
from stages.errors import ChddlError

app = typer.Typer(
    name="chddl",
    help="Condense heterogeneous image datasets into a few synthetic images per class (CHDDL on DC, DM, MTT).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"chddl {__version__}")
        raise typer.Exit()


@app.callback()
def global_options(
    ctx: typer.Context,
    workdir: Annotated[
        Path, typer.Option("--workdir", "-w", envvar="CHDDL_WORKDIR", help="workspace folder for artifacts")
    ] = Path("chddl-runs"),
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    seed: Annotated[int, typer.Option(help="default seed of every stage")] = 0,
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="more output (repeatable)")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars or tables, only results")] = False,
    threads: Annotated[
        Optional[int],
        typer.Option(
            "--threads",
            min=1,
            help="CPU threads of torch [the cores this "
            "process may use]; 1 per process is fastest when several jobs "
            "share the machine",
        ),
    ] = None,
    no_wait: Annotated[
        bool,
        typer.Option(
            "--no-wait",
            help="fail at once, naming the process, when another process is "
            "computing the same artifact (default: wait, then reuse its result)",
        ),
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version and exit")
    ] = False,
) -> None:
    """Global options, given before the subcommand."""
    try:
        keep_freed_memory()
    except ChddlError as exc:
        error(str(exc))
        raise typer.Exit(2) from None
    ctx.obj = Globals(workdir=workdir, device=device, seed=seed, verbose=verbose, quiet=quiet, wait=not no_wait)
    show_library_notes(verbose)
    if threads is not None:
        torch.set_num_threads(threads)


app.command("label", cls=SectionedCommand)(label.label)
app.command("pretrain-experts", cls=SectionedCommand)(pretrain_experts.pretrain_experts)
app.command("train-teacher", cls=SectionedCommand)(teacher.train_teacher)
app.command("condense", cls=SectionedCommand)(condense.condense)
app.command("evaluate", cls=SectionedCommand)(evaluate.evaluate)
app.command("report", cls=SectionedCommand)(report.report)
app.command("export", cls=SectionedCommand)(export.export)
app.command("demo", cls=SectionedCommand)(demo.demo)


def _terminate(signum: int, frame: object) -> None:
    # Schedulers stop jobs with SIGTERM: treat it as Ctrl-C so long stages checkpoint and exit cleanly (with 143).
    raise Terminated


def _global_options() -> set[str]:
    """The option names of ``chddl`` itself (``--workdir``, ``-w``, ...)."""
    return {name for param in typer.main.get_command(app).params for name in param.opts}


def main() -> None:
    """Console-script entry point."""
    signal.signal(signal.SIGTERM, _terminate)
    try:
        code = app(standalone_mode=False)
    except Exception as exc:
        # Typer's (click's) usage errors: one line in chddl's own "error:" format, not a boxed "Error:".
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `chddl`: its help
            typer.echo(exc.format_message())
            sys.exit(0)
        if not (hasattr(exc, "format_message") and hasattr(exc, "exit_code")):
            raise
        context = getattr(exc, "ctx", None)
        hint = f"; see `{context.command_path} --help`" if context is not None else ""
        option = getattr(exc, "option_name", None)
        if type(exc).__name__ == "NoSuchOption" and option in _global_options() and context is not None:
            hint = (
                f"; {option} is a global option and goes before the subcommand: "
                f"`chddl {option} ... {context.info_name} ...`"
            )
        error(exc.format_message() + hint)
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)
