"""``chddl report``: Markdown + self-contained HTML of everything in the workspace."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from chddl_cli.common import console, globals_of, guarded, progress_for
from stages import report as report_stage


@guarded
def report(
    ctx: typer.Context,
    out: Annotated[Optional[Path], typer.Option(help="output folder [WORKDIR/report]")] = None,
) -> None:
    """Gather every artifact of the workspace into report.md and report.html (tables, image grids,
    pseudo-domain diagnostics, loss curves, sweeps, costs, the paper's figures alongside)."""
    g = globals_of(ctx)
    md, page = report_stage.run(g.workspace(), out, progress_for(g))
    console.print(f"report: {page}")
    console.print(f"markdown: {md}")
