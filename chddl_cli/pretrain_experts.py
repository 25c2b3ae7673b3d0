"""``chddl pretrain-experts``: MTT expert trajectories (class experts and per-pseudo-domain domain models)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from chddl_cli.common import (
    cost_line,
    guarded,
    human_bytes,
    note_done,
    plural,
    print_table,
    result_line,
    run_stage,
)
from chddl_cli.options import config_options
from stages import api
from stages import pretrain_experts as experts_stage
from stages.device import init_distributed
from stages.executor import rank_world


@guarded
@config_options(experts_stage.ExpertsConfig)
def pretrain_experts(
    ctx: typer.Context,
    config: Annotated[Optional[str], typer.Option("--config", "-c", help="YAML preset (path or shipped name)")] = None,
    dataset: Annotated[Optional[str], typer.Option(help="dataset artifact directory [the labels' dataset]")] = None,
    labels: Annotated[Optional[str], typer.Option(help="labels artifact directory [the workspace's latest]")] = None,
    force: Annotated[bool, typer.Option("--force", help="retrain even when a cached artifact exists")] = False,
    settings: dict | None = None,
) -> None:
    """Train MTT expert trajectories on the real training split: class experts, and one set per
    pseudo-domain for CHDDL. Resumes expert by expert; under `torchrun --nproc-per-node K` the
    experts are split across the K processes."""
    init_distributed()
    res, progress = run_stage(
        ctx, api.pretrain_experts, dataset=dataset, labels=labels, preset=config, force=force, **settings
    )
    art = res.artifact
    if art is None or rank_world()[0] != 0:  # under torchrun rank 0 reports (a cache hit reaches every rank)
        return
    note_done(progress, "experts", res, redo="retrain")
    table = Table(title=f"experts {art.name}", show_header=False, title_justify="left")
    info = art.info
    table.add_row("sets", ", ".join(info["sets"]))
    table.add_row(
        "experts",
        f"{info['num_experts']} per set x {plural(info['epochs'], 'epoch')} ({info['dtype']}), "
        f"{plural(info['world_size'], 'process')}",
    )
    table.add_row("test accuracy", ", ".join(f"{k} {v['mean_test_acc']:.1f}%" for k, v in art.metrics.items()))
    size = sum(f["bytes"] for f in info["files"].values())
    cost = art.meta.get("cost", {})
    table.add_row("storage", human_bytes(size))
    table.add_row("cost", cost_line(cost))
    print_table(table)
    result_line("experts", art.path)
