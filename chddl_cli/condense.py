"""``chddl condense``: synthesise a condensed set with DM or DC, with or without CHDDL."""

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
    print_json,
    print_table,
    result_line,
    run_stage,
)
from chddl_cli.options import config_options
from stages import api
from stages import condense as condense_stage
from stages.api import Artifact
from stages.condense_config import help_section
from stages.device import init_distributed
from stages.executor import rank_world
from stages.methods import METHODS
from stages.report.inventory import training_free


def condensed_table(art: Artifact) -> Table:
    cfg, info, m = art.config, art.info, art.metrics
    table = Table(title=f"condensed set {art.name}", show_header=False, title_justify="left")
    table.add_row(
        "method",
        f"{cfg['base'].upper()}{' + CHDDL' if cfg['domain_aware'] else ''} "
        f"({info.get('arch', cfg['arch'])}{', teacher ' + info['teacher'] if info.get('teacher') else ''}"
        f"{'' if training_free(art) else ', init ' + cfg['init']})",
    )
    table.add_row("images", f"{info['ipc']} per class x {info['num_classes']} classes, {info['image_size']} px")
    start = m.get("resumed_from") or 0
    origin = (
        f", continued from {m['continued_from']}"
        if m.get("continued_from")
        else (f", resumed at iteration {start}" if start else "")
    )
    if training_free(art):
        table.add_row("iterations", f"none: training-free ({m['synthesis_s']} s)")
    else:
        written = (
            f"; {m['checkpoints_written']} checkpoint{'s' * (m['checkpoints_written'] > 1)} written "
            f"in {m['checkpoint_write_s']:.3g} s"
            if m.get("checkpoints_written")
            else ""
        )
        table.add_row("iterations", f"{cfg['iterations']} ({m.get('s_per_iteration')} s/iteration{origin}{written})")
    if m.get("masks"):
        k = m["masks"]
        table.add_row(
            "masks",
            f"mean largest alpha {k['mean_max_alpha']}, neighbour agreement {k['neighbour_agreement']} "
            f"(chance {k['chance_agreement']})",
        )
    losses = f"class {m.get('final_loss_cls'):.4g}"
    if cfg["domain_aware"]:
        losses += f", domain {m.get('final_loss_dom'):.4g} (lambda {cfg['lam']}, tau {cfg['tau']})"
    table.add_row("final loss", losses)
    cost = art.meta.get("cost", {})
    if cfg["base"] in METHODS and METHODS.get(cfg["base"]).learned_eval_lr:
        table.add_row(
            "learned lr", f"{info['eval_lr']:.4g} (used for evaluation); rollbacks: {len(m.get('rollbacks', []))}"
        )
    table.add_row("cost", cost_line(cost))
    table.add_row("image grid", str(art.path / "grid.png"))
    return table


@guarded
@config_options(condense_stage.CondenseConfig, sections=help_section)
def condense(
    ctx: typer.Context,
    config: Annotated[
        Optional[str],
        typer.Option("--config", "-c", help="YAML preset (path or shipped name, e.g. dm_pacs_cpu or mtt_pacs_ipc1)"),
    ] = None,
    dataset: Annotated[
        Optional[str],
        typer.Option(help="dataset artifact directory [the labels' dataset, else the workspace's latest]"),
    ] = None,
    labels: Annotated[Optional[str], typer.Option(help="labels artifact directory [the workspace's latest]")] = None,
    experts: Annotated[
        Optional[str], typer.Option(help="mtt: experts artifact directory [the workspace's latest]")
    ] = None,
    teacher: Annotated[
        Optional[str], typer.Option(help="sre2l: teacher artifact directory [the workspace's latest]")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="recompute even when a cached artifact exists")] = False,
    as_json: Annotated[bool, JSON_OPTION] = False,
    settings: dict | None = None,
) -> None:
    """Condense the dataset into IPC synthetic images per class (DM, DC, MTT or SRe2L, optionally + CHDDL).

    Long runs checkpoint every 100 iterations, after the first minute and then
    every 5 minutes, and on Ctrl-C or SIGTERM; re-running the same command
    resumes from the last checkpoint.
    A run with more --iterations than a finished run of the same settings
    continues from that run's final state (each rung stays its own artifact).
    Under `torchrun --nproc-per-node K` DM, DC and SRe2L (also with CHDDL) split the
    classes across the K processes and write the set one process would.
    """
    init_distributed()
    res, progress = run_stage(
        ctx,
        api.condense,
        dataset=dataset,
        labels=labels,
        experts=experts,
        teacher=teacher,
        preset=config,
        force=force,
        **settings,
    )
    art, hit = res.artifact, res.cache_hit
    if art is None or rank_world()[0] != 0:  # under torchrun rank 0 reports (a cache hit reaches every rank)
        return
    note_done(progress, "condensed", res)
    if as_json:
        print_json(artifact_json(art, hit) | {"info": art.info})
        return
    if progress.enabled:
        print_table(condensed_table(art))
    result_line("condensed", art.path)
