"""``chddl demo``: every stage on the built-in dataset, then a summary."""

from __future__ import annotations

from typing import Annotated

import typer

from chddl_cli.common import console, globals_of, guarded, progress_for
from chddl_cli.condense import condensed_table
from chddl_cli.label import agreement_table, cost_line, dataset_table, labels_table
from stages import condense as condense_stage
from stages import label as label_stage
from stages.artifacts import Workspace
from stages.config import build, load_preset, section
from stages.data.dataset import load_dataset
from stages.data.ingest import DatasetConfig, ingest
from stages.device import resolve_device


@guarded
def demo(
    ctx: typer.Context,
    force: Annotated[bool, typer.Option("--force", help="recompute every stage instead of reusing the cache")] = False,
) -> None:
    """Run the pipeline on the built-in generated dataset (6 shapes x 4 domains, 32 px).

    Stages: ingestion, FFT pseudo-domain labels, DM + CHDDL condensation
    (the small `demo` preset).
    """
    g = globals_of(ctx)
    ws = Workspace(g.workdir)
    progress = progress_for(g)
    device = resolve_device(g.device)
    data_art, _ = ingest("builtin:demo", build(DatasetConfig), ws, force=force, progress=progress)
    dataset = load_dataset(data_art)
    lab_art, _ = label_stage.run(dataset, build(label_stage.LabelConfig, {"seed": g.seed}), ws,
                                 device=device, force=force, progress=progress)
    labels = label_stage.load_labels(lab_art, dataset)
    cfg = build(condense_stage.CondenseConfig, {"seed": g.seed}, section(load_preset("condense/demo"), "condense"))
    cond_art, _ = condense_stage.run(dataset, labels, cfg, ws, device=device, force=force, progress=progress)
    console.print(dataset_table(data_art))
    console.print(labels_table(lab_art, dataset.domain_names))
    agree = agreement_table(lab_art)
    if agree is not None:
        console.print(agree)
    console.print(condensed_table(cond_art))
    console.print(f"[bold]demo done[/]: dataset {cost_line(data_art)}; labels {cost_line(lab_art)}; "
                  f"condense {cost_line(cond_art)}; workspace {ws.root}")
