"""Condensation split by class across the processes of one torchrun job.

A base method whose class loss is a sum of per-class terms (DM, DC) lets each
rank compute only its classes' terms: it draws the same real batch and the same
augmentation as a single process would (the per-iteration generator is shared),
keeps its classes' part, and back-propagates. The image gradients of the ranks
touch disjoint rows, so their sum (an all-reduce) is the single process's
gradient, and every rank applies the same update to the same images. Rank 0
writes checkpoints and the artifact; the loss it records is the sum over ranks.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from stages.errors import ChddlError
from stages.executor import rank_world


def class_shard(num_classes: int, rank: int, world: int) -> torch.Tensor:
    """The classes rank ``rank`` of ``world`` computes: every ``world``-th class from ``rank``."""
    return torch.arange(rank, num_classes, world)


def check_same_settings(key: str) -> None:
    """Refuse, on every rank, ranks whose artifacts would differ (started with different settings or inputs)."""
    _, world = rank_world()
    if world == 1:
        return
    keys: list[str | None] = [None] * world
    dist.all_gather_object(keys, key)
    if len(set(keys)) > 1:
        raise ChddlError(
            "the torchrun ranks were started with different settings; start them all with the same command"
        )


def check_shardable(name: str, splits_by_class: bool, domain_aware: bool, num_classes: int) -> None:
    """Refuse, on every rank alike, a run that cannot be split by class."""
    _, world = rank_world()
    if world == 1:
        return
    if not splits_by_class:
        raise ChddlError(
            f"--base {name} cannot be split across processes: its loss does not split by class; run it in one process "
            "per GPU instead, each with its own --seed or --ipc (README, several GPUs)"
        )
    if domain_aware:
        raise ChddlError(
            "CHDDL's domain loss is not split across processes yet; under torchrun pass --no-domain-aware, or run "
            "CHDDL in one process"
        )
    if world > num_classes:
        raise ChddlError(f"--nproc-per-node {world} exceeds the {num_classes} classes; use at most {num_classes}")


def sum_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over the ranks (in place); itself outside torchrun."""
    if rank_world()[1] > 1:
        dist.all_reduce(tensor)
    return tensor


def sum_gradients(params: list[torch.Tensor]) -> None:
    """Sum each parameter's gradient over the ranks (a missing gradient counts as zeros)."""
    if rank_world()[1] == 1:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)


def gather_costs(cost: dict) -> list[dict]:
    """Every rank's cost record, in rank order (just this one outside torchrun)."""
    _, world = rank_world()
    if world == 1:
        return [cost]
    out: list[dict | None] = [None] * world
    dist.all_gather_object(out, cost)
    return [c or {} for c in out]
