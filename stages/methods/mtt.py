"""MTT: matching training trajectories (Cazenavette et al., 2022).

A student starts at an expert's snapshot at a random epoch below
``max_start_epoch``, trains ``syn_steps`` steps on the synthetic images with
a learned learning rate (the graph kept through every step), and the loss
is ||theta_N - theta*||^2 / ||theta_0 - theta*||^2 with theta* the expert
``expert_epochs`` later. The student is unrolled with
``torch.func.functional_call`` on a flat parameter vector; with
``checkpoint_student`` (the default) each student step is recomputed during
the backward pass instead of stored: identical gradients; at IPC 10 with 50
steps the peak falls from 16.1 to 1.9 GB for 12% more time. With
``compile_student`` (``--compile``; auto from 300 iterations) each step and
its vector-Jacobian product are compiled graphs (stages/methods/student.py),
recomputed like a checkpointed step: 0.72x the eager step's time at IPC 10 (without
``checkpoint_student``, each compiled step keeps its residuals instead). For CHDDL's
domain loss, the student starts from a domain expert of a random
pseudo-domain d and trains on the domain-d views (Theta' = the domain
experts, docs/design.md 1.3) for ``domain_syn_steps`` steps, by default
ceil(syn_steps / D): a domain expert is trained on about 1/D of the real
images, so its ``expert_epochs`` span about 1/D of the class expert's SGD
steps; with ``shared_theta`` it starts from a class expert instead (Theta' =
Theta) and takes syn_steps steps by default.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint

from stages.config import option, require, require_finite
from stages.data.augment import DSA
from stages.methods.base import METHODS, BaseMethod, MatchBatch, MethodContext, MethodSpec, RealPool
from stages.methods.common import NetFactory
from stages.methods.student import CompiledStudentStep, student_loss
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
        compile_student: bool = False,
    ) -> None:
        self.net = net_factory().to(device)
        self.device, self.dsa, self.store = device, dsa, store
        self.domain_syn_steps = domain_syn_steps  # None: ceil(syn_steps / D), see domain_steps
        self.domain_steps_used: int | None = None
        self.syn_steps, self.expert_epochs, self.max_start_epoch = syn_steps, expert_epochs, max_start_epoch
        self.batch_syn, self.lr_lr = batch_syn, lr_lr
        self.syn_lr = torch.tensor(float(syn_lr), device=device, requires_grad=True)
        self.min_syn_lr = min_syn_lr
        self.checkpoint_student = checkpoint_student
        # compiled: a step is made again in the backward pass (the memory of checkpoint_student), or without
        # checkpoint_student each step's compiled graph keeps its residuals (the reference's memory)
        self.compiled_step = (
            CompiledStudentStep(self.net, store.unflatten, keep=not checkpoint_student) if compile_student else None
        )
        self.shared_theta = shared_theta
        self.clamped = 0

    def after_update(self) -> None:
        # The reference has no guard: a negative learned lr makes the student ascend.
        with torch.no_grad():
            if self.syn_lr < self.min_syn_lr:
                self.syn_lr.fill_(self.min_syn_lr)
                self.clamped += 1

    def evaluation_lr(self) -> float:
        return float(self.syn_lr.detach())

    def run_stats(self) -> dict:
        stats: dict = {"syn_lr_clamped": self.clamped}
        if self.domain_steps_used is not None:
            stats["domain_syn_steps"] = self.domain_steps_used
        return stats

    def domain_steps(self, num_domains: int) -> int:
        """Student steps of the domain loss: ``domain_syn_steps`` when given; else ceil(syn_steps / D) from a
        domain expert (its epochs hold ~1/D of the class expert's SGD steps), syn_steps from a class expert."""
        if self.domain_syn_steps:
            return self.domain_syn_steps
        return self.syn_steps if self.shared_theta else -(-self.syn_steps // max(1, num_domains))

    def new_round(self, round_index: int, roles: tuple[str, ...], g: torch.Generator) -> None:
        """Nothing to re-initialise: the experts are fixed."""

    def extra_parameter_groups(self) -> list[dict]:
        return [{"name": "syn_lr", "params": [self.syn_lr], "lr": self.lr_lr}]

    def loss(self, role: str, batch: MatchBatch, pool: RealPool, g: torch.Generator) -> torch.Tensor:
        syn, labels, expert_set, steps = batch.syn, self.targets(batch), "class", self.syn_steps
        if role == "domain":
            steps = self.domain_steps_used = self.domain_steps(batch.num_groups)
            d = int(torch.randint(batch.num_groups, (1,), generator=g)) if batch.focus is None else batch.focus
            chosen = batch.syn_groups == d
            syn, labels = syn[chosen], labels[chosen]
            expert_set = "class" if self.shared_theta else f"domain{d}"
        k = int(torch.randint(self.store.num_experts, (1,), generator=g))
        start = self.start_epoch(g)
        theta0, target = self.store.pair(expert_set, k, start, start + self.expert_epochs, self.device)
        return self.unroll(syn, labels, theta0, target, g, steps)

    def targets(self, batch: MatchBatch) -> torch.Tensor:
        """What the student's cross-entropy trains each row of ``batch.syn`` towards: its class (DATM: the
        learned soft label of its image)."""
        return batch.syn_labels

    def start_epoch(self, g: torch.Generator) -> int:
        """The expert epoch the student starts from: uniform in [0, max_start_epoch)."""
        return int(torch.randint(self.max_start_epoch, (1,), generator=g))

    def _student_step(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, lr: torch.Tensor) -> torch.Tensor:
        loss = student_loss(self.net, self.store.unflatten(theta), x, y)
        grad = torch.autograd.grad(loss, theta, create_graph=True)[0]
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
        """The normalised parameter distance after ``steps`` (default ``syn_steps``) student steps;
        ``labels`` are classes (N,) or class probabilities (N, classes)."""
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
            if self.compiled_step is not None:
                theta = self.compiled_step(theta, x, labels[idx], self.syn_lr)
            elif self.checkpoint_student:
                theta = checkpoint(self._student_step, theta, x, labels[idx], self.syn_lr, use_reentrant=False)
            else:
                theta = self._student_step(theta, x, labels[idx], self.syn_lr)
        return ((theta - target) ** 2).sum() / ((theta0 - target) ** 2).sum().clamp(min=1e-12)


#: ``--compile auto`` compiles the student's step from this many iterations on. Compiling the class and the
#: domain student's graphs takes ~110 s once on 2 cores; it saves ~0.5 s an iteration of the PACS IPC 1
#: preset (1.40 -> 0.86 s) and ~18 s at IPC 10 with 50 steps (62 -> 45 s; BENCHMARKS.md)
COMPILE_FROM = 300


@dataclass
class MTTOptions:
    """MTT's own settings."""

    syn_steps: int = option(20, "mtt: student steps on the synthetic images per iteration")
    domain_syn_steps: int | None = option(
        None,
        "mtt+chddl: student steps of the domain loss [ceil(syn_steps / D): a domain expert takes ~1/D of the "
        "class expert's SGD steps per epoch; syn_steps with --theta-prime shared]",
    )
    expert_epochs: int = option(3, "mtt: expert epochs the student must cover")
    max_start_epoch: int = option(25, "mtt: start epochs are drawn from [0, max_start_epoch)")
    syn_lr: float = option(0.01, "mtt: initial learned synthetic learning rate")
    lr_lr: float = option(1e-5, "mtt: learning rate of the synthetic learning rate")
    batch_syn: int | None = option(None, "mtt: synthetic images per student step [all]")
    checkpoint_student: bool = option(
        True,
        "mtt: recompute student steps in the backward pass (IPC 10: 0.12x the memory for 1.12x the time, "
        "BENCHMARKS.md); off, a compiled student keeps each step's residuals instead",
    )
    min_syn_lr: float = option(1e-6, "mtt: the learned synthetic lr is kept at or above this (positive)")


def validate(cfg) -> None:
    """MTT's checks of its settings (DATM's too)."""
    require_finite("--syn-lr", cfg.syn_lr)
    require_finite("--lr-lr", cfg.lr_lr)
    require(
        cfg.syn_steps >= 1 and cfg.expert_epochs >= 1 and cfg.max_start_epoch >= 1,
        "--syn-steps, --expert-epochs and --max-start-epoch must be at least 1",
    )
    require(cfg.domain_syn_steps is None or cfg.domain_syn_steps >= 1, "--domain-syn-steps must be at least 1")
    require(cfg.syn_lr > 0 and cfg.min_syn_lr > 0, "--syn-lr must be positive")


def arguments(ctx: MethodContext) -> dict:
    """MTT's constructor arguments from the stage's context (DATM builds on them)."""
    if ctx.store is None:
        raise ValueError("MTT needs an ExpertStore")
    c = ctx.cfg
    return {
        "net_factory": ctx.net_factory,
        "device": ctx.device,
        "dsa": ctx.dsa,
        "store": ctx.store,
        "syn_steps": c.syn_steps,
        "expert_epochs": c.expert_epochs,
        "max_start_epoch": c.max_start_epoch,
        "syn_lr": c.syn_lr,
        "lr_lr": c.lr_lr,
        "batch_syn": c.batch_syn,
        "min_syn_lr": c.min_syn_lr,
        "checkpoint_student": c.checkpoint_student,
        "domain_syn_steps": c.domain_syn_steps,
        "shared_theta": c.theta_prime == "shared",
        "compile_student": ctx.compile_hot_path,
    }


def _build(ctx: MethodContext) -> MTT:
    return MTT(**arguments(ctx))


METHODS.register("mtt")(
    MethodSpec(
        name="mtt",
        summary="trajectory matching against expert trajectories (needs chddl pretrain-experts)",
        build=_build,
        defaults={"iterations": 5000, "lr_img": 1000.0, "dsa": True, "lam": 0.01, "nan_retries": 3},
        theta_prime=("own", "shared"),
        options_class=MTTOptions,
        validate=validate,
        needs="experts",
        learned_eval_lr=True,
        compile_from=COMPILE_FROM,
    )
)
