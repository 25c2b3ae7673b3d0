"""``chddl evaluate``: train fresh networks on a condensed set or a baseline, test on real data."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from chddl_cli.common import (
    JSON_OPTION,
    artifact_json,
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
from stages import evaluate as evaluate_stage
from stages.api import Artifact
from stages.device import init_distributed
from stages.executor import rank_world


def results_table(art: Artifact) -> Table:
    domains = art.info.get("domain_names") or []
    cfg = art.config
    soft = ""
    if art.info.get("labels") == "soft":
        soft = f", soft labels of {art.info['teacher']} (T {cfg['temperature']})"
    elif art.info.get("labels") == "set":
        soft = f", the set's own soft labels (T {cfg['temperature']})"
    title = (
        f"{art.info['train_set']}{soft}: top-1 % on {art.info['num_test']} test images, {plural(cfg['runs'], 'run')} x "
        f"{plural(cfg['epochs'], 'epoch')}"
    )
    table = Table(title=title, title_justify="left")
    # the architecture never shrinks to an ellipsis; on a narrow console the
    # accuracies wrap at "±" and long domain names fold instead
    table.add_column("arch", no_wrap=True, min_width=max(len(a) for a in art.metrics))
    for column in ("overall", *domains):
        table.add_column(column, justify="right", overflow="fold")
    fmt = lambda s: "-" if s.get("mean") is None else f"{s['mean']:.2f} ± {s['std']:.2f}"  # noqa: E731
    for arch, m in art.metrics.items():
        table.add_row(arch, fmt(m), *(fmt(m.get("per_domain", {}).get(d, {})) for d in domains))
    return table


@guarded
@config_options(evaluate_stage.EvaluateConfig, renames={"archs": "arch"})
def evaluate(
    ctx: typer.Context,
    condensed: Annotated[
        Optional[str], typer.Argument(help="condensed-set artifact directory [the workspace's latest]")
    ] = None,
    baseline: Annotated[
        Optional[str], typer.Option(help="evaluate a baseline instead: random (IPC real images per class) | whole")
    ] = None,
    ipc: Annotated[int, typer.Option(help="images per class of the random baseline")] = 10,
    soft_labels: Annotated[
        Optional[str],
        typer.Option(
            "--soft-labels",
            help="teacher artifact directory: train on its outputs for each augmented batch (KL at --temperature) "
            "instead of the hard labels [the set's own soft labels if it carries them (RDED), else hard labels]",
        ),
    ] = None,
    hard_labels: Annotated[
        bool,
        typer.Option("--hard-labels", help="train on the hard labels even when the set carries soft labels"),
    ] = False,
    config: Annotated[Optional[str], typer.Option("--config", "-c", help="YAML preset (path or shipped name)")] = None,
    dataset: Annotated[Optional[str], typer.Option(help="dataset artifact directory [the set's dataset]")] = None,
    force: Annotated[bool, typer.Option("--force", help="recompute even when a cached artifact exists")] = False,
    as_json: Annotated[bool, JSON_OPTION] = False,
    settings: dict | None = None,
) -> None:
    """Train networks from scratch on the condensed set only and report test top-1 (mean ± std over runs),
    overall and per true domain. Under `torchrun --nproc-per-node K` the runs are split across K processes."""
    init_distributed()
    res, progress = run_stage(
        ctx,
        api.evaluate,
        condensed,
        dataset=dataset,
        baseline=baseline,
        ipc=ipc,
        soft_labels=soft_labels,
        hard_labels=hard_labels,
        preset=config,
        force=force,
        **settings,
    )
    art, hit = res.artifact, res.cache_hit
    if art is None or rank_world()[0] != 0:  # under torchrun rank 0 reports (a cache hit reaches every rank)
        return
    note_done(progress, "evaluation", res)
    if as_json:
        print_json(artifact_json(art, hit) | {"train_set": art.info["train_set"]})
        return
    print_table(results_table(art))
    result_line("evaluation", art.path)
