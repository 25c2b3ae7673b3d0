"""MTT: matching training trajectories (Cazenavette et al., 2022).

A student starts at an expert's snapshot at a random epoch below
``max_start_epoch``, trains ``syn_steps`` steps on the synthetic images with
a learned learning rate (the graph kept through every step), and the loss
is ||theta_N - theta*||^2 / ||theta_0 - theta*||^2 with theta* the expert
``expert_epochs`` later. The student is unrolled with
``torch.func.functional_call`` on a flat parameter vector; with
``checkpoint_student`` (the default) each student step is recomputed during
the backward pass instead of stored: identical gradients; at IPC 10 with 50
steps the peak falls from 16.1 to 1.9 GB for 12% more time. For CHDDL's
domain loss, the student starts from a domain expert of a random
pseudo-domain d and trains on the domain-d views (Theta' = the domain
experts, docs/design.md 1.3); with ``shared_theta`` it starts from a class expert
instead (Theta' = Theta).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.checkpoint import checkpoint

from stages.data.augment import DSA
from stages.methods.base import METHODS, BaseMethod, MatchBatch, RealPool
from stages.methods.common import NetFactory
from stages.methods.trajectories import ExpertStore


class MTT(BaseMethod):
    default_lambda = 0.01
    splits_by_class = False  # one student trains on all classes at once

    def __init__(
        self,
        net_factory: NetFactory,
        device: torch.device,
        dsa: DSA | None,
        store: ExpertStore,
        syn_steps: int,
        expert_epochs: int,
        max_start_epoch: int,
        syn_lr: float,
        lr_lr: float,
        batch_syn: int | None,
        min_syn_lr: float = 1e-6,
        checkpoint_student: bool = False,
        domain_syn_steps: int | None = None,
        shared_theta: bool = False,
    ) -> None:
        self.net = net_factory().to(device)
        self.device, self.dsa, self.store = device, dsa, store
        self.domain_syn_steps = domain_syn_steps or syn_steps
        self.syn_steps, self.expert_epochs, self.max_start_epoch = syn_steps, expert_epochs, max_start_epoch
        self.batch_syn, self.lr_lr = batch_syn, lr_lr
        self.syn_lr = torch.tensor(float(syn_lr), device=device, requires_grad=True)
        self.min_syn_lr = min_syn_lr
        self.checkpoint_student = checkpoint_student
        self.shared_theta = shared_theta
        self.clamped = 0

    def after_update(self) -> None:
        # The reference has no guard: a negative learned lr makes the student ascend.
        with torch.no_grad():
            if self.syn_lr < self.min_syn_lr:
                self.syn_lr.fill_(self.min_syn_lr)
                self.clamped += 1

    def new_round(self, round_index: int, roles: tuple[str, ...], g: torch.Generator) -> None:
        """Nothing to re-initialise: the experts are fixed."""

    def extra_parameter_groups(self) -> list[dict]:
        return [{"name": "syn_lr", "params": [self.syn_lr], "lr": self.lr_lr}]

    def loss(self, role: str, batch: MatchBatch, pool: RealPool, g: torch.Generator) -> torch.Tensor:
        syn, labels, expert_set, steps = batch.syn, batch.syn_labels, "class", self.syn_steps
        if role == "domain":
            steps = self.domain_syn_steps
            d = int(torch.randint(batch.num_groups, (1,), generator=g)) if batch.focus is None else batch.focus
            chosen = batch.syn_groups == d
            syn, labels = syn[chosen], labels[chosen]
            expert_set = "class" if self.shared_theta else f"domain{d}"
        k = int(torch.randint(self.store.num_experts, (1,), generator=g))
        start = int(torch.randint(self.max_start_epoch, (1,), generator=g))
        theta0, target = self.store.pair(expert_set, k, start, start + self.expert_epochs, self.device)
        return self.unroll(syn, labels, theta0, target, g, steps)

    def _student_step(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, lr: torch.Tensor) -> torch.Tensor:
        # The loss is differentiated twice (create_graph); of the attention kernels only the math one has a
        # second derivative (flash and memory-efficient attention have none, on CPU or CUDA). Inside the step,
        # so that checkpoint's recomputation uses it too.
        with sdpa_kernel(SDPBackend.MATH):
            out = functional_call(self.net, self.store.unflatten(theta), (x,))
        grad = torch.autograd.grad(F.cross_entropy(out, y), theta, create_graph=True)[0]
        return theta - lr * grad

    def unroll(
        self,
        syn: torch.Tensor,
        labels: torch.Tensor,
        theta0: torch.Tensor,
        target: torch.Tensor,
        g: torch.Generator,
        steps: int | None = None,
    ) -> torch.Tensor:
        """The normalised parameter distance after ``steps`` (default ``syn_steps``) student steps."""
        theta = theta0.clone().requires_grad_(True)
        batch = self.batch_syn or len(syn)
        chunks: list[torch.Tensor] = []
        for _ in range(steps or self.syn_steps):
            if not chunks:
                chunks = list(torch.randperm(len(syn), generator=g).to(syn.device).split(batch))
            idx = chunks.pop()
            x = syn[idx]
            if self.dsa is not None:
                x = self.dsa.apply(x, self.dsa.sample(len(idx), tuple(x.shape[-2:]), g, one_family=True))
            if self.checkpoint_student:
                theta = checkpoint(self._student_step, theta, x, labels[idx], self.syn_lr, use_reentrant=False)
            else:
                theta = self._student_step(theta, x, labels[idx], self.syn_lr)
        return ((theta - target) ** 2).sum() / ((theta0 - target) ** 2).sum().clamp(min=1e-12)


@METHODS.register("mtt")
def mtt(
    net_factory: NetFactory,
    device: torch.device,
    dsa: DSA | None,
    store: ExpertStore | None = None,
    syn_steps: int = 20,
    expert_epochs: int = 3,
    max_start_epoch: int = 25,
    syn_lr: float = 0.01,
    lr_lr: float = 1e-5,
    batch_syn: int | None = None,
    min_syn_lr: float = 1e-6,
    checkpoint_student: bool = False,
    domain_syn_steps: int | None = None,
    shared_theta: bool = False,
    **_: object,
) -> MTT:
    """Trajectory matching against stored expert trajectories."""
    if store is None:
        raise ValueError("MTT needs an ExpertStore")
    return MTT(
        net_factory,
        device,
        dsa,
        store,
        syn_steps,
        expert_epochs,
        max_start_epoch,
        syn_lr,
        lr_lr,
        batch_syn,
        min_syn_lr,
        checkpoint_student,
        domain_syn_steps,
        shared_theta,
    )
