"""``chddl demo``: every stage on the built-in dataset, then a summary."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from chddl_cli.common import console, globals_of, guarded, progress_for
from chddl_cli.label import agreement_table, dataset_table, labels_table
from stages import condense as condense_stage
from stages import evaluate as evaluate_stage
from stages import label as label_stage
from stages import report as report_stage
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

    Ingests it, assigns FFT pseudo-domain labels, condenses it with DM and
    with DM + CHDDL (IPC 5, the small `demo` preset), evaluates both and a
    random real subset with ConvNet, prints the comparison and writes the report.
    """
    g = globals_of(ctx)
    ws = g.workspace()
    progress = progress_for(g)
    device = resolve_device(g.device)
    data_art, _ = ingest("builtin:demo", build(DatasetConfig), ws, force=force, progress=progress)
    dataset = load_dataset(data_art)
    lab_art, _ = label_stage.run(dataset, build(label_stage.LabelConfig, {"seed": g.seed}), ws,
                                 device=device, force=force, progress=progress)
    labels = label_stage.load_labels(lab_art, dataset)
    console.print(dataset_table(data_art))
    console.print(labels_table(lab_art, dataset.domain_names))
    console.print(agreement_table(lab_art))
    eval_cfg = build(evaluate_stage.EvaluateConfig, {"seed": g.seed}, section(load_preset("evaluate/demo"), "evaluate"))
    cond_preset = section(load_preset("condense/demo"), "condense")
    summary = Table(title="demo: ConvNet top-1 % on the test split (mean ± std over runs)", title_justify="left")
    for column in ("training set", "overall", *dataset.domain_names, "condense s"):
        summary.add_column(column, justify="left" if column == "training set" else "right")
    sets = [("random real, IPC 5", evaluate_stage.baseline(dataset, "random", cond_preset["ipc"], g.seed), None)]
    for aware in (False, True):
        cfg = build(condense_stage.CondenseConfig, {"seed": g.seed}, cond_preset, {"domain_aware": aware})
        art, _ = condense_stage.run(dataset, labels, cfg, ws, device=device, force=force, progress=progress)
        sets.append((f"DM{' + CHDDL' if aware else ''}, IPC 5", evaluate_stage.from_condensed(art, dataset), art))
    for title, train_set, cond in sets:
        ev, _ = evaluate_stage.run(train_set, dataset, eval_cfg, ws, device=device, force=force, progress=progress)
        m = ev.metrics["convnet"]
        cells = [f"{m['mean']:.1f} ± {m['std']:.1f}"] + [f"{m['per_domain'][d]['mean']:.1f}" for d in dataset.domain_names]
        summary.add_row(title, *cells, f"{cond.meta['cost']['wall_s']:.0f}" if cond else "-")
    console.print(summary)
    _, page = report_stage.run(ws)
    console.print(f"[bold]demo done[/]: report {page} (workspace {ws.root})")
