"""The ``chddl`` Typer application: global options and the subcommand table."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Annotated

import typer

from chddl_cli import condense, demo, evaluate, label, pretrain_experts, report
from chddl_cli.common import Globals
from stages import __version__

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
    workdir: Annotated[Path, typer.Option("--workdir", "-w", envvar="CHDDL_WORKDIR", help="workspace folder for artifacts")] = Path("chddl-runs"),
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    seed: Annotated[int, typer.Option(help="default seed of every stage")] = 0,
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="more output (repeatable)")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars or tables, only results")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version and exit")] = False,
) -> None:
    """Global options, given before the subcommand."""
    ctx.obj = Globals(workdir=workdir, device=device, seed=seed, verbose=verbose, quiet=quiet)


app.command("label")(label.label)
app.command("pretrain-experts")(pretrain_experts.pretrain_experts)
app.command("condense")(condense.condense)
app.command("evaluate")(evaluate.evaluate)
app.command("report")(report.report)
app.command("demo")(demo.demo)


def _terminate(signum: int, frame: object) -> None:
    # Schedulers stop jobs with SIGTERM: treat it as Ctrl-C so long stages checkpoint and exit cleanly.
    raise KeyboardInterrupt


def main() -> None:
    """Console-script entry point."""
    signal.signal(signal.SIGTERM, _terminate)
    app()
