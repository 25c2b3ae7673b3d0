"""``chddl evaluate``: train fresh networks on a condensed set or a baseline, test on real data."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from chddl_cli.common import (
    JSON_OPTION,
    artifact_json,
    console,
    globals_of,
    guarded,
    plural,
    print_json,
    progress_for,
    result_line,
)
from stages import api
from stages.api import Artifact
from stages.device import init_distributed


def results_table(art: Artifact) -> Table:
    domains = art.info.get("domain_names") or []
    cfg = art.config
    title = (
        f"{art.info['train_set']}: top-1 % on {art.info['num_test']} test images, {plural(cfg['runs'], 'run')} x "
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
def evaluate(
    ctx: typer.Context,
    condensed: Annotated[
        Optional[str], typer.Argument(help="condensed-set artifact directory [the workspace's latest]")
    ] = None,
    arch: Annotated[Optional[str], typer.Option(help="comma-separated architectures [convnet]")] = None,
    runs: Annotated[Optional[int], typer.Option(help="trainings per architecture [10]")] = None,
    parallel: Annotated[
        Optional[int], typer.Option(help="runs of one architecture trained at once with vmap [1]")
    ] = None,
    epochs: Annotated[Optional[int], typer.Option(help="training epochs [1000]")] = None,
    lr: Annotated[Optional[float], typer.Option(help="learning rate [the set's own]")] = None,
    dsa: Annotated[Optional[bool], typer.Option("--dsa/--no-dsa", help="DSA while training [on]")] = None,
    baseline: Annotated[
        Optional[str], typer.Option(help="evaluate a baseline instead: random (IPC real images per class) | whole")
    ] = None,
    ipc: Annotated[int, typer.Option(help="images per class of the random baseline")] = 10,
    target_domain: Annotated[Optional[str], typer.Option(help="score only this true domain's test images")] = None,
    seed: Annotated[Optional[int], typer.Option(help="seed of the first run [the global --seed]")] = None,
    config: Annotated[Optional[str], typer.Option("--config", "-c", help="YAML preset (path or shipped name)")] = None,
    dataset: Annotated[Optional[str], typer.Option(help="dataset artifact directory [the set's dataset]")] = None,
    force: Annotated[bool, typer.Option("--force", help="recompute even when a cached artifact exists")] = False,
    as_json: Annotated[bool, JSON_OPTION] = False,
) -> None:
    """Train networks from scratch on the condensed set only and report test top-1 (mean ± std over runs),
    overall and per true domain. Under `torchrun --nproc-per-node K` the runs are split across K processes."""
    init_distributed()
    g = globals_of(ctx)
    archs = tuple(a.strip() for a in arch.split(",") if a.strip()) if arch else None
    options = {
        "archs": archs,
        "runs": runs,
        "epochs": epochs,
        "lr": lr,
        "dsa": dsa,
        "seed": seed,
        "target_domain": target_domain,
        "parallel": parallel,
    }
    progress = progress_for(g)
    res = api.evaluate(
        condensed,
        workspace=g.workspace(),
        dataset=dataset,
        baseline=baseline,
        ipc=ipc,
        preset=config,
        device=g.device,
        force=force,
        default_seed=g.seed,
        progress=progress,
        **options,
    )
    art, hit = res.artifact, res.cache_hit
    if art is None:  # a non-zero torchrun rank: rank 0 reports
        return
    progress.note(f"evaluation {art.name}: " + ("cached - skipping (use --force to recompute)" if hit else "done"))
    if as_json:
        print_json(artifact_json(art, hit) | {"train_set": art.info["train_set"]})
        return
    console.print(results_table(art))
    result_line("evaluation", art.path)
