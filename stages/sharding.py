"""Condensation split by class across the processes of one torchrun job.

Every rank holds all synthetic images and draws the same real batch and the same
augmentation as a single process would (the per-iteration generator is shared);
it computes with its own classes only: their synthetic images (and their domain
views) and the real images of those classes. Two kinds of loss split this way:

- a sum of per-class terms (DM's and DC's class losses): each rank computes its
  classes' terms;
- a function of statistics summed over groups that span classes (CHDDL's
  per-domain means, SRe2L's batch-norm statistics of the whole synthetic batch):
  the method sums its rank's part of each statistic over the ranks with
  :func:`global_sum`, whose backward pass sums the gradients as well, and
  returns :func:`replicated_share` of what it computes from the sums, so that
  the ranks' losses add up to the single process's loss.

Either way each rank's image gradient is non-zero on its own rows only, their
sum (an all-reduce) is the single process's gradient, and every rank applies
the same update to the same images. Rank 0 writes checkpoints and the artifact;
the loss it records is the sum over ranks.
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


def check_shardable(
    name: str, splits_by_class: bool, sums_statistics: bool, domain_aware: bool, schedule: str, num_classes: int
) -> None:
    """Refuse, on every rank alike, a run that cannot be split by class.

    ``splits_by_class``: the method's class loss is a sum of per-class terms; ``sums_statistics``: its losses
    accept a batch spread over the ranks (:attr:`stages.methods.base.MatchBatch.spread`)."""
    _, world = rank_world()
    if world == 1:
        return
    if not (splits_by_class or sums_statistics):
        raise ChddlError(
            f"--base {name} cannot be split across processes: its loss does not split by class; run it in one process "
            "per GPU instead, each with its own --seed or --ipc (README, several GPUs)"
        )
    if domain_aware and not sums_statistics:
        raise ChddlError(
            f"CHDDL's domain loss with --base {name} is not split across processes; under torchrun pass "
            "--no-domain-aware, or run it in one process per GPU (README, several GPUs)"
        )
    if domain_aware and schedule == "algorithm1":
        raise ChddlError(
            "--schedule algorithm1 steps one class at a time and cannot be split across processes; use --schedule "
            "summed or sequential under torchrun, or run it in one process"
        )
    if world > num_classes:
        raise ChddlError(f"--nproc-per-node {world} exceeds the {num_classes} classes; use at most {num_classes}")


class _SumOverRanks(torch.autograd.Function):
    """An all-reduce (sum) through which gradients flow: the backward pass sums the incoming gradients over
    the ranks as well (what ``torch.distributed.nn.functional.all_reduce`` did before its deprecation)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # noqa: D102
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: D102
        out = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out


def global_sum(tensor: torch.Tensor, spread: bool) -> torch.Tensor:
    """``tensor`` summed over the ranks when ``spread`` (a new tensor; the backward pass sums the incoming
    gradients over the ranks too, so each rank's part receives the gradient of the whole); itself otherwise."""
    if not spread or rank_world()[1] == 1:
        return tensor
    if not tensor.requires_grad:
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out
    return _SumOverRanks.apply(tensor)


def replicated_share(loss: torch.Tensor, spread: bool) -> torch.Tensor:
    """A rank's share of a loss every rank computes alike from :func:`global_sum` statistics (1 / world of it),
    so the losses and gradients summed over the ranks are the single process's."""
    return loss / rank_world()[1] if spread else loss


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


def record_ranks(cost: dict) -> bool:
    """Gather every rank's cost (a collective: every rank calls it); on rank 0 add the number of processes
    and, under torchrun, each rank's wall time and peak memory to ``cost``. True on rank 0 (the writer)."""
    ranks = gather_costs(dict(cost))
    rank, world = rank_world()
    if rank != 0:
        return False
    if world > 1:
        cost["per_rank"] = [{k: c.get(k) for k in ("wall_s", "peak_rss_bytes", "peak_cuda_bytes")} for c in ranks]
    cost["world_size"] = world
    return True


def gather_costs(cost: dict) -> list[dict]:
    """Every rank's cost record, in rank order (just this one outside torchrun)."""
    _, world = rank_world()
    if world == 1:
        return [cost]
    out: list[dict | None] = [None] * world
    dist.all_gather_object(out, cost)
    return [c or {} for c in out]
