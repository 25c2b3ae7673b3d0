"""``chddl pretrain-experts``: MTT expert trajectories (class experts and per-pseudo-domain domain models)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from chddl_cli.common import console, cost_line, globals_of, guarded, human_bytes, progress_for, result_line
from stages import api
from stages.device import init_distributed


@guarded
def pretrain_experts(
    ctx: typer.Context,
    num_experts: Annotated[Optional[int], typer.Option(help="experts per set [100]")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="epochs per expert, one snapshot each [50]")] = None,
    lr: Annotated[Optional[float], typer.Option(help="expert SGD learning rate [0.01]")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="training batch size [256]")] = None,
    domain_experts: Annotated[
        Optional[bool],
        typer.Option(
            "--domain-experts/--no-domain-experts", help="also train per-pseudo-domain experts for MTT + CHDDL [on]"
        ),
    ] = None,
    dtype: Annotated[
        Optional[str],
        typer.Option(
            help=(
                "snapshot storage: float32 | bfloat16 (half the disk, no measurable accuracy change in RESULTS.md) "
                "| float16 [float32]"
            )
        ),
    ] = None,
    arch: Annotated[Optional[str], typer.Option(help="expert architecture [convnet]")] = None,
    seed: Annotated[Optional[int], typer.Option(help="seed [the global --seed]")] = None,
    config: Annotated[Optional[str], typer.Option("--config", "-c", help="YAML preset (path or shipped name)")] = None,
    dataset: Annotated[Optional[str], typer.Option(help="dataset artifact directory [the labels' dataset]")] = None,
    labels: Annotated[Optional[str], typer.Option(help="labels artifact directory [the workspace's latest]")] = None,
    force: Annotated[bool, typer.Option("--force", help="retrain even when a cached artifact exists")] = False,
) -> None:
    """Train MTT expert trajectories on the real training split: class experts, and one set per
    pseudo-domain for CHDDL. Resumes expert by expert; under `torchrun --nproc-per-node K` the
    experts are split across the K processes."""
    init_distributed()
    g = globals_of(ctx)
    options = {
        "num_experts": num_experts,
        "epochs": epochs,
        "lr": lr,
        "batch_size": batch_size,
        "domain_experts": domain_experts,
        "dtype": dtype,
        "arch": arch,
        "seed": seed,
    }
    progress = progress_for(g)
    res = api.pretrain_experts(
        workspace=g.workspace(),
        dataset=dataset,
        labels=labels,
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
    progress.note(f"experts {art.name}: " + ("cached - skipping (use --force to retrain)" if hit else "done"))
    table = Table(title=f"experts {art.name}", show_header=False, title_justify="left")
    info = art.info
    table.add_row("sets", ", ".join(info["sets"]))
    table.add_row(
        "experts",
        f"{info['num_experts']} per set x {info['epochs']} epochs ({info['dtype']}), {info['world_size']} process(es)",
    )
    table.add_row("test accuracy", ", ".join(f"{k} {v['mean_test_acc']:.1f}%" for k, v in art.metrics.items()))
    size = sum(f["bytes"] for f in info["files"].values())
    cost = art.meta.get("cost", {})
    table.add_row("storage", human_bytes(size))
    table.add_row("cost", cost_line(cost))
    console.print(table)
    result_line("experts", art.path)
