"""``chddl train-teacher``: SRe2L's squeeze, a teacher with batch norm trained on the real training split."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from chddl_cli.common import (
    JSON_OPTION,
    artifact_json,
    cost_line,
    guarded,
    note_done,
    plural,
    print_json,
    print_table,
    result_line,
    run_stage,
)
from chddl_cli.options import config_options
from stages import api
from stages import teacher as teacher_stage
from stages.device import init_distributed
from stages.executor import rank_world


@guarded
@config_options(teacher_stage.TeacherConfig)
def train_teacher(
    ctx: typer.Context,
    config: Annotated[Optional[str], typer.Option("--config", "-c", help="YAML preset (path or shipped name)")] = None,
    dataset: Annotated[Optional[str], typer.Option(help="dataset artifact directory [the workspace's latest]")] = None,
    force: Annotated[bool, typer.Option("--force", help="retrain even when a cached artifact exists")] = False,
    as_json: Annotated[bool, JSON_OPTION] = False,
    settings: dict | None = None,
) -> None:
    """Train a teacher with batch norm on the real training split (SRe2L's squeeze), for
    `condense --base sre2l` and `evaluate --soft-labels`. Checkpoints after every epoch;
    re-running the same command resumes. Under `torchrun --nproc-per-node K` the K processes
    train it with DistributedDataParallel, each on its slice of every batch."""
    init_distributed()
    res, progress = run_stage(ctx, api.train_teacher, dataset=dataset, preset=config, force=force, **settings)
    art, hit = res.artifact, res.cache_hit
    if art is None or rank_world()[0] != 0:  # under torchrun rank 0 reports
        return
    note_done(progress, "teacher", res, redo="retrain")
    if as_json:
        print_json(artifact_json(art, hit))
        return
    if progress.enabled:
        table = Table(title=f"teacher {art.name}", show_header=False, title_justify="left")
        table.add_row("network", f"{art.info['arch']}, {art.info['batch_norm_layers']} batch-norm layers")
        c = art.config
        table.add_row("training", f"{plural(c['epochs'], 'epoch')}, lr {c['lr']}, batch {c['batch_size']}")
        per = art.metrics.get("per_domain") or {}
        domains = " (" + ", ".join(f"{d} {v:.1f}" for d, v in per.items()) + ")" if per else ""
        acc = art.metrics.get("test_acc")
        table.add_row("test accuracy", "- (the dataset has no test split)" if acc is None else f"{acc:.2f}%{domains}")
        table.add_row("cost", cost_line(art.meta.get("cost", {})))
        print_table(table)
    result_line("teacher", art.path)
