"""Training a network from scratch on a small in-memory set, and testing it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from stages.data.augment import DSA
from stages.executor import rank_world


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) of the temperature-softened outputs, times T^2
    (Hinton et al.: keeps the gradient scale independent of T), mean over the batch."""
    t = float(temperature)
    return (
        F.kl_div(
            F.log_softmax(student / t, dim=1), F.log_softmax(teacher / t, dim=1), log_target=True, reduction="batchmean"
        )
        * t
        * t
    )


@dataclass
class SoftLabels:
    """Train on a teacher's outputs for each augmented batch (SRe2L / FKD
    relabelling, online) instead of the hard labels."""

    teacher: nn.Module
    temperature: float

    def loss(self, logits: torch.Tensor, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Distillation loss of the student's ``logits`` on the augmented batch ``x`` (images ``rows``)."""
        self.teacher.eval()
        with torch.no_grad():
            target = self.teacher(x)
        return distillation_loss(logits, target, self.temperature)


@dataclass
class StoredSoftLabels:
    """Train on soft labels stored with the set, one row of logits per image
    (RDED's region labels, learned labels), whatever the augmentation."""

    logits: torch.Tensor
    temperature: float

    def loss(self, logits: torch.Tensor, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Distillation loss of the student's ``logits`` against the stored logits of the images ``rows``."""
        return distillation_loss(logits, self.logits[rows], self.temperature)


def _epoch_lr(lr: float, epoch: int, epochs: int, decay: bool) -> float:
    # lr x0.1 from half the epochs on (MultiStepLR's milestone epochs // 2)
    return lr * 0.1 if decay and epoch >= epochs // 2 else lr


def train_network(
    net: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    epochs: int,
    lr: float,
    momentum: float,
    weight_decay: float,
    batch_size: int,
    dsa: DSA | None,
    g: torch.Generator,
    decay: bool = True,
    on_epoch: Callable[[int, torch.optim.Optimizer], None] | None = None,
    soft: SoftLabels | StoredSoftLabels | None = None,
    start_epoch: int = 0,
    optimizer_state: dict[int, dict] | None = None,
    data_parallel: bool = False,
) -> float:
    """SGD with momentum, lr x0.1 at half the epochs (``decay``), DSA per sample
    (one family per batch, as the reference). ``on_epoch(e, optimizer)`` runs
    after each epoch. With ``soft`` the loss is the distillation loss against
    the teacher's outputs on the same augmented batch. A run resumes at
    ``start_epoch`` from the net, ``optimizer_state`` (``state_dict()["state"]``) and ``g`` as they were
    after that epoch. Returns the last epoch's mean training loss.

    ``data_parallel`` under torchrun: DistributedDataParallel, each rank taking its slice of every batch
    (the batch and its augmentation are drawn alike on every rank from ``g``, so they stay in step and
    ``batch_size`` stays the global batch); batch norm normalises each rank's slice with its own statistics."""
    net.train()
    rank, world = rank_world() if data_parallel else (0, 1)
    model: nn.Module = net if world == 1 else DistributedDataParallel(net)
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    if optimizer_state is not None:  # the per-parameter state (momentum buffers); the settings are this call's
        optimizer.load_state_dict(optimizer.state_dict() | {"state": optimizer_state})
    n, size = len(images), tuple(images.shape[-2:])
    last = images.new_zeros(())
    for epoch in range(start_epoch, epochs):
        for group in optimizer.param_groups:
            group["lr"] = _epoch_lr(lr, epoch, epochs, decay)
        order = torch.randperm(n, generator=g).to(images.device)
        total = images.new_zeros(())
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            params = dsa.sample(len(idx), size, g, one_family=True) if dsa is not None else None
            share = 1.0
            if world > 1 and len(idx) >= world:
                mine = torch.tensor_split(torch.arange(len(idx)), world)[rank]
                idx, params = idx[mine.to(idx.device)], params.index(mine) if params is not None else None
            elif world > 1:  # a last batch too small to split: every rank takes all of it (same mean gradient)
                share = 1.0 / world
            x = images[idx]
            if dsa is not None:
                x = dsa.apply(x, params)
            logits = model(x)
            loss = F.cross_entropy(logits, labels[idx]) if soft is None else soft.loss(logits, x, idx)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total = total + loss.detach() * len(idx) * share
        if world > 1:
            dist.all_reduce(total)
        last = total / n
        if on_epoch is not None:
            on_epoch(epoch + 1, optimizer)
    return float(last)


def train_networks(
    nets: list[nn.Module],
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    epochs: int,
    lr: float,
    momentum: float,
    weight_decay: float,
    batch_size: int,
    dsa: DSA | None,
    gens: list[torch.Generator],
    decay: bool = True,
    soft: SoftLabels | StoredSoftLabels | None = None,
) -> None:
    """Train several networks of one architecture at once (torch.func.vmap
    over their stacked parameters). Network m draws its batches and
    augmentation from ``gens[m]`` exactly as ``train_network`` would, so the
    result equals M separate calls up to floating-point reordering; the
    trained weights are written back into ``nets``."""
    from torch.func import functional_call, stack_module_state, vmap

    if len(nets) == 1:
        train_network(
            nets[0],
            images,
            labels,
            epochs=epochs,
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            batch_size=batch_size,
            dsa=dsa,
            g=gens[0],
            decay=decay,
            soft=soft,
        )
        return
    for net in nets:
        net.train()
    params, buffers = stack_module_state(nets)
    template = nets[0]

    def forward(p: dict, b: dict, x: torch.Tensor) -> torch.Tensor:
        return functional_call(template, (p, b), (x,))

    batched = vmap(forward, randomness="different")
    optimizer = torch.optim.SGD(params.values(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    n, size, m = len(images), tuple(images.shape[-2:]), len(nets)
    for epoch in range(epochs):
        for group in optimizer.param_groups:
            group["lr"] = _epoch_lr(lr, epoch, epochs, decay)
        orders = [torch.randperm(n, generator=g).to(images.device) for g in gens]
        for start in range(0, n, batch_size):
            xs, ys, rows = [], [], []
            for order, g in zip(orders, gens):
                idx = order[start : start + batch_size]
                x = images[idx]
                if dsa is not None:
                    x = dsa.apply(x, dsa.sample(len(idx), size, g, one_family=True))
                xs.append(x)
                ys.append(labels[idx])
                rows.append(idx)
            stacked = torch.stack(xs)
            logits = batched(params, buffers, stacked)
            # the sum over networks of each one's mean loss: each slice gets its own gradient
            if soft is None:
                loss = F.cross_entropy(logits.flatten(0, 1), torch.stack(ys).flatten()) * m
            else:
                loss = soft.loss(logits.flatten(0, 1), stacked.flatten(0, 1), torch.cat(rows)) * m
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        for i, net in enumerate(nets):
            for name, p in net.named_parameters():
                p.copy_(params[name][i])


@torch.no_grad()
def predict(net: nn.Module, images: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Predicted classes of ``images`` (evaluation mode)."""
    net.eval()
    if not len(images):
        return torch.zeros(0, dtype=torch.long, device=images.device)
    return torch.cat([net(images[i : i + batch_size]).argmax(dim=1) for i in range(0, len(images), batch_size)])


def accuracy(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Top-1 accuracy in percent."""
    return 100.0 * float((pred.cpu() == target.cpu()).double().mean()) if len(target) else float("nan")


def group_accuracy(pred: torch.Tensor, target: torch.Tensor, groups: torch.Tensor, num_groups: int) -> torch.Tensor:
    """Top-1 accuracy in percent of each group (NaN for an empty group)."""
    correct = (pred.cpu() == target.cpu()).double()
    groups = groups.cpu()
    hits = torch.zeros(num_groups, dtype=torch.float64).index_add_(0, groups, correct)
    counts = torch.bincount(groups, minlength=num_groups).double()
    return torch.where(counts > 0, 100.0 * hits / counts.clamp(min=1), torch.full_like(hits, float("nan")))
