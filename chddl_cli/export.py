"""``chddl export``: a condensed set as an image folder, an npz or DD-Ranking's files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from chddl_cli.common import JSON_OPTION, globals_of, guarded, print_json, result_line
from stages import api


@guarded
def export(
    ctx: typer.Context,
    condensed: Annotated[
        Optional[str], typer.Argument(help="condensed-set artifact directory [the workspace's latest]")
    ] = None,
    format: Annotated[
        str,
        typer.Option(
            "--format",
            "-f",
            help="imagefolder (class folders of PNGs) | npz | ddranking (images.pt, labels.pt, lr.pt for MTT)",
        ),
    ] = "imagefolder",
    out: Annotated[Path, typer.Option("--out", "-o", help="folder to write: new, empty, or an earlier export")] = Path(
        "export"
    ),
    dataset: Annotated[
        Optional[str], typer.Option(help="dataset artifact, to un-whiten a ZCA set [the set's own]")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="replace an earlier export in --out (never other files)")
    ] = False,
    as_json: Annotated[bool, JSON_OPTION] = False,
) -> None:
    """Export a condensed set for other tools: PNGs un-normalised (and un-whitened), an npz with both pixel and
    normalised tensors, or DD-Ranking's files; each with chddl_export.yaml (normalisation, learning rate)."""
    g = globals_of(ctx)
    path = api.export(condensed, workspace=g.workspace(), format=format, out=out, dataset=dataset, force=force)
    if as_json:
        print_json({"export": str(path), "format": format})
        return
    result_line("exported", path)
