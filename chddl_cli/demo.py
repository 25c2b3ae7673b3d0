"""``chddl demo``: every stage on the built-in dataset, then a summary."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from chddl_cli.common import console, globals_of, guarded, print_table, progress_for
from chddl_cli.label import agreement_table, dataset_table, labels_table
from stages import api
from stages.config import load_preset
from stages.errors import ChddlError
from stages.outputs import NotWritable


@guarded
def demo(
    ctx: typer.Context,
    force: Annotated[bool, typer.Option("--force", help="recompute every stage instead of reusing the cache")] = False,
) -> None:
    """Run the pipeline on the built-in generated dataset (6 shapes x 4 domains, 32 px).

    Ingests it, assigns FFT pseudo-domain labels, condenses it with DM and
    with DM + CHDDL (IPC 5, the small `demo` preset), evaluates both and a
    random real subset with ConvNet, prints the comparison and writes the report.
    """
    g = globals_of(ctx)
    ws = g.workspace()
    progress = progress_for(g)
    common = {"workspace": ws, "device": g.device, "force": force, "default_seed": g.seed, "progress": progress}
    labelled = api.label("builtin:demo", **common)
    lab_art, data_art = labelled.artifact, labelled.inputs["dataset"]
    domains = data_art.info["domain_names"]
    print_table(dataset_table(data_art))
    print_table(labels_table(lab_art, domains))
    print_table(agreement_table(lab_art))
    ipc = int(load_preset("condense/demo")["condense"]["ipc"])
    summary = Table(title="demo: ConvNet top-1 % on the test split (mean ± std over runs)", title_justify="left")
    for column in ("training set", "overall", *domains, "condense s"):
        summary.add_column(column, justify="left" if column == "training set" else "right")
    runs = [
        (
            f"random real, IPC {ipc}",
            None,
            api.evaluate(dataset=data_art.path, baseline="random", ipc=ipc, preset="evaluate/demo", **common),
        )
    ]
    for aware in (False, True):
        cond = api.condense(
            dataset=data_art.path, labels=lab_art.path, preset="condense/demo", domain_aware=aware, **common
        ).artifact
        runs.append(
            (
                f"DM{' + CHDDL' if aware else ''}, IPC {ipc}",
                cond,
                api.evaluate(cond.path, preset="evaluate/demo", **common),
            )
        )
    for title, cond, ev in runs:
        m = ev.artifact.metrics["convnet"]
        cells = [f"{m['mean']:.1f} ± {m['std']:.1f}"] + [f"{m['per_domain'][d]['mean']:.1f}" for d in domains]
        summary.add_row(title, *cells, f"{cond.meta['cost']['wall_s']:.0f}" if cond else "-")
    print_table(summary)
    console.print(
        "How to read it: each row trains fresh ConvNets on that set alone and tests them on the real test split; "
        "condensation works when DM beats random real images of the same size, and DM + CHDDL minus DM is what "
        "CHDDL adds.",
        soft_wrap=False,
    )
    page = write_report(ws)
    console.print(f"[bold]demo done[/]: report {page} (workspace {ws.root})", soft_wrap=True)


def write_report(ws: api.Workspace) -> Path:
    """The demo's report in its workspace; the demo has no --out, so an unwritable one names -w as the fix."""
    try:
        return api.report(workspace=ws)[1]
    except NotWritable as exc:
        raise ChddlError(
            f"cannot write {exc.path} ({exc.reason}); run the demo in a writable workspace: `chddl -w DIR demo`"
        ) from None
