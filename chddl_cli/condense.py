"""``chddl condense``: synthesise a condensed set with DM or DC, with or without CHDDL."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from chddl_cli.common import (
    JSON_OPTION,
    artifact_json,
    console,
    cost_line,
    globals_of,
    guarded,
    print_json,
    progress_for,
    result_line,
)
from stages import api
from stages.api import Artifact


def condensed_table(art: Artifact) -> Table:
    cfg, info, m = art.config, art.info, art.metrics
    table = Table(title=f"condensed set {art.name}", show_header=False, title_justify="left")
    table.add_row(
        "method",
        f"{cfg['base'].upper()}{' + CHDDL' if cfg['domain_aware'] else ''} ({cfg['arch']}, init {cfg['init']})",
    )
    table.add_row("images", f"{info['ipc']} per class x {info['num_classes']} classes, {info['image_size']} px")
    start = m.get("resumed_from") or 0
    origin = (
        f", continued from {m['continued_from']}"
        if m.get("continued_from")
        else (f", resumed at iteration {start}" if start else "")
    )
    table.add_row("iterations", f"{cfg['iterations']} ({m.get('s_per_iteration')} s/iteration{origin})")
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
    if cfg["base"] == "mtt":
        table.add_row(
            "learned lr", f"{info['eval_lr']:.4g} (used for evaluation); rollbacks: {len(m.get('rollbacks', []))}"
        )
    table.add_row("cost", cost_line(cost))
    table.add_row("image grid", str(art.path / "grid.png"))
    return table


@guarded
def condense(
    ctx: typer.Context,
    base: Annotated[Optional[str], typer.Option(help="base method: dm | dc | mtt [default: dm]")] = None,
    ipc: Annotated[Optional[int], typer.Option(help="images per class [default: 10]")] = None,
    domain_aware: Annotated[
        Optional[bool],
        typer.Option("--domain-aware/--no-domain-aware", help="add CHDDL's domain-aware module [default: on]"),
    ] = None,
    iterations: Annotated[Optional[int], typer.Option(help="outer iterations [dm 20000, dc 1000, mtt 5000]")] = None,
    lam: Annotated[Optional[float], typer.Option(help="domain loss weight lambda [dm, dc 0.1; mtt 0.01]")] = None,
    tau: Annotated[Optional[float], typer.Option(help="mask softmax temperature [0.1]")] = None,
    mask_init: Annotated[
        Optional[float], typer.Option(help="mask init value (constant) or std (normal) [0.01]")
    ] = None,
    mask_init_mode: Annotated[Optional[str], typer.Option(help="constant | normal [constant]")] = None,
    mask_lr: Annotated[
        Optional[float], typer.Option(help="mask learning rate [sgd: same as --lr-img; adam: 0.01]")
    ] = None,
    mask_optimizer: Annotated[Optional[str], typer.Option(help="sgd (the images' optimiser) | adam [sgd]")] = None,
    theta_prime: Annotated[
        Optional[str],
        typer.Option(
            help=(
                "Theta' of the domain loss: own (dc: a second network; mtt: the pseudo-domain experts) | shared "
                "(the class loss's) [dm shared; dc, mtt own]"
            )
        ),
    ] = None,
    schedule: Annotated[
        Optional[str],
        typer.Option(
            help=(
                "summed (one step on L_cls + lambda L_dom) | sequential (a class step, then a domain step) | "
                "algorithm1 (the paper's pseudocode: a step per class, then a step per pseudo-domain) [summed]"
            )
        ),
    ] = None,
    domain_lambda: Annotated[
        Optional[bool],
        typer.Option(
            "--domain-lambda/--no-domain-lambda",
            help=(
                "sequential, algorithm1: the domain steps minimise lambda L_dom; off: L_dom unweighted, as "
                "Algorithm 1 writes it [on]"
            ),
        ),
    ] = None,
    mask_resolution: Annotated[
        Optional[int],
        typer.Option(help="structured masks: K x K per domain, up-sampled bilinearly to the image [full resolution]"),
    ] = None,
    mask_channels: Annotated[
        Optional[str],
        typer.Option(help="per-channel (the paper) | shared (one mask for the 3 colour channels) [per-channel]"),
    ] = None,
    share_real: Annotated[
        Optional[bool],
        typer.Option(
            "--share-real/--no-share-real", help="dm, summed: one class-grouped real draw serves both losses [on]"
        ),
    ] = None,
    init: Annotated[Optional[str], typer.Option(help="noise | real [noise]")] = None,
    arch: Annotated[Optional[str], typer.Option(help="matching network [convnet]")] = None,
    lr_img: Annotated[Optional[float], typer.Option(help="image learning rate [dm 1.0, dc 0.1, mtt 1000]")] = None,
    batch_real: Annotated[Optional[int], typer.Option(help="real images per group per step [256]")] = None,
    dsa: Annotated[
        Optional[bool], typer.Option("--dsa/--no-dsa", help="siamese augmentation while matching [dm on, dc off]")
    ] = None,
    domains: Annotated[
        Optional[str], typer.Option(help="protocols: comma-separated true domains to condense from [all]")
    ] = None,
    exclude_domain: Annotated[
        Optional[str], typer.Option(help="protocols: leave this true domain out (leave-one-domain-out)")
    ] = None,
    compile: Annotated[
        Optional[str], typer.Option(help="torch.compile the real forward: auto | on | off [auto]")
    ] = None,
    seed: Annotated[Optional[int], typer.Option(help="seed [default: the global --seed]")] = None,
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
    syn_steps: Annotated[Optional[int], typer.Option(help="mtt: student steps per iteration [20]")] = None,
    domain_syn_steps: Annotated[
        Optional[int], typer.Option(help="mtt+chddl: student steps of the domain loss [--syn-steps]")
    ] = None,
    expert_epochs: Annotated[Optional[int], typer.Option(help="mtt: expert epochs to match [3]")] = None,
    max_start_epoch: Annotated[Optional[int], typer.Option(help="mtt: start epoch drawn below this [25]")] = None,
    lr_lr: Annotated[Optional[float], typer.Option(help="mtt: learning rate of the learned lr [1e-5]")] = None,
    checkpoint_student: Annotated[
        Optional[bool],
        typer.Option(
            "--checkpoint-student/--no-checkpoint-student",
            help=(
                "mtt: recompute each student step in the backward pass: 0.12x the memory for 1.12x the time at IPC "
                "10 [on]"
            ),
        ),
    ] = None,
    clip_grad: Annotated[Optional[float], typer.Option(help="clip the images' gradient norm [off]")] = None,
    nan_retries: Annotated[
        Optional[int], typer.Option(help="rollbacks with halved lrs on NaN before failing [mtt 3, else 0]")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="recompute even when a cached artifact exists")] = False,
    as_json: Annotated[bool, JSON_OPTION] = False,
) -> None:
    """Condense the dataset into IPC synthetic images per class (DM, DC or MTT, optionally + CHDDL).

    Long runs checkpoint every 100 iterations, after the first minute and then
    every 5 minutes, and on Ctrl-C or SIGTERM; re-running the same command
    resumes from the last checkpoint.
    A run with more --iterations than a finished run of the same settings
    continues from that run's final state (each rung stays its own artifact).
    """
    g = globals_of(ctx)
    options = {
        "base": base,
        "ipc": ipc,
        "domain_aware": domain_aware,
        "iterations": iterations,
        "lam": lam,
        "tau": tau,
        "mask_init": mask_init,
        "mask_init_mode": mask_init_mode,
        "mask_lr": mask_lr,
        "mask_optimizer": mask_optimizer,
        "theta_prime": theta_prime,
        "schedule": schedule,
        "share_real": share_real,
        "domain_lambda": domain_lambda,
        "mask_resolution": mask_resolution,
        "mask_channels": mask_channels,
        "init": init,
        "arch": arch,
        "lr_img": lr_img,
        "batch_real": batch_real,
        "dsa": dsa,
        "compile": compile,
        "seed": seed,
        "domains": tuple(d.strip() for d in domains.split(",") if d.strip()) if domains else None,
        "exclude_domain": exclude_domain,
        "syn_steps": syn_steps,
        "domain_syn_steps": domain_syn_steps,
        "expert_epochs": expert_epochs,
        "max_start_epoch": max_start_epoch,
        "lr_lr": lr_lr,
        "clip_grad": clip_grad,
        "nan_retries": nan_retries,
        "checkpoint_student": checkpoint_student,
    }
    progress = progress_for(g)
    res = api.condense(
        workspace=g.workspace(),
        dataset=dataset,
        labels=labels,
        experts=experts,
        preset=config,
        device=g.device,
        force=force,
        default_seed=g.seed,
        progress=progress,
        **options,
    )
    art, hit = res.artifact, res.cache_hit
    progress.note(f"condensed {art.name}: " + ("cached - skipping (use --force to recompute)" if hit else "done"))
    if as_json:
        print_json(artifact_json(art, hit) | {"info": art.info})
        return
    if not g.quiet:
        console.print(condensed_table(art))
    result_line("condensed", art.path)
