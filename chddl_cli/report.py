"""``chddl report``: Markdown + self-contained HTML of everything in the workspace."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from chddl_cli.common import JSON_OPTION, globals_of, guarded, print_json, progress_for, result_line
from stages import api


@guarded
def report(
    ctx: typer.Context,
    out: Annotated[Optional[Path], typer.Option(help="output folder [WORKDIR/report]")] = None,
    as_json: Annotated[bool, JSON_OPTION] = False,
) -> None:
    """Gather every artifact of the workspace into report.md and report.html (tables, image grids,
    pseudo-domain diagnostics, loss curves, sweeps, costs, the paper's figures alongside)."""
    g = globals_of(ctx)
    md, page = api.report(workspace=g.workspace(), out=out, progress=progress_for(g))
    if as_json:
        print_json({"report": str(page), "markdown": str(md)})
        return
    result_line("report", page)
    result_line("markdown", md)
