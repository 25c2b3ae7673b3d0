"""DC: gradient matching (Zhao et al., 2021).

Each round starts a new network; for ``outer_loop`` steps it matches, per
group, the gradients of the cross-entropy on real vs synthetic images with
the reference's layer-wise distance (1 - cosine per output channel, summed;
1-D parameters skipped), updating the images, then trains the network
``inner_loop`` epochs on the synthetic set. Theta' (the domain role) is a
second network with its own initialisation on the same schedule, trained in
its inner loop on the domain views (docs/design.md 1.3); with ``shared_theta`` the
domain loss uses the class network itself (Theta' = Theta), trained only on
the synthetic images.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad

from stages.config import option, require, require_finite
from stages.data.augment import DSA
from stages.methods.base import METHODS, BaseMethod, MatchBatch, MethodContext, MethodSpec, RealPool
from stages.methods.common import NetFactory, RoleNets, augmented_pair, real_images
from stages.models import per_sample

#: (outer_loop, inner_loop) by IPC, from the reference implementation
LOOPS = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}
#: real images per gradient pass: a class's 256 real images 64 at a time took 0.92x the time and 0.68x the peak
#: memory of all at once on a 2-core CPU (a 128 MiB activation block, mapped and faulted in afresh every iteration,
#: becomes four reused 32 MiB ones; BENCHMARKS.md)
REAL_GRAD_CHUNK = 64


def default_loops(ipc: int) -> tuple[int, int]:
    """The reference's loops for ``ipc``; other IPCs take the nearest listed one."""
    return LOOPS[min(LOOPS, key=lambda k: (abs(k - ipc), k))]


def gradient_distance(real: list[torch.Tensor], syn: list[torch.Tensor]) -> torch.Tensor:
    """Sum over layers of sum over output channels of (1 - cosine similarity)."""
    total = syn[0].new_zeros(())
    for gr, gs in zip(real, syn):
        if gr.ndim == 1:
            continue
        gr, gs = gr.reshape(gr.shape[0], -1), gs.reshape(gs.shape[0], -1)
        total = total + (1 - (gr * gs).sum(-1) / (gr.norm(dim=-1) * gs.norm(dim=-1) + 1e-6)).sum()
    return total


class DC(BaseMethod):
    default_lambda = 0.1

    def __init__(
        self,
        net_factory: NetFactory,
        device: torch.device,
        dsa: DSA | None,
        lr_net: float,
        outer_loop: int,
        inner_loop: int,
        batch_train: int,
        compile_real: bool = False,
        shared_theta: bool = False,
        backend: str = "inductor",
    ) -> None:
        self.nets = RoleNets(net_factory, device)
        self.dsa, self.lr_net = dsa, lr_net
        self.outer_loop, self.inner_loop, self.batch_train = outer_loop, inner_loop, batch_train
        self.compile_real, self.shared_theta, self.backend = compile_real, shared_theta, backend
        self._grad_fns: dict[str, object] = {}

    def _real_gradients(self, role: str, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
        """Gradients of the real cross-entropy (the mean over ``x``) w.r.t. the matched (>= 2-D) parameters,
        computed ``REAL_GRAD_CHUNK`` images at a time and summed, each chunk weighted by its share of ``x``.

        With ``compile_real`` each chunk's is a compiled ``torch.func.grad`` (fused norm/activation/pool
        forward and backward, ~20% faster on CPU).
        """
        # batch norm: the whole batch, so that its statistics are the reference's
        chunk = REAL_GRAD_CHUNK if per_sample(self.nets[role]) else len(x)
        total: list[torch.Tensor] = []
        for start in range(0, len(x), chunk):
            xs, ys = x[start : start + chunk], y[start : start + chunk]
            grads = self._chunk_gradients(role, xs, ys)
            if len(xs) < len(x):
                grads = [g * (len(xs) / len(x)) for g in grads]
            total = grads if not total else [t + g for t, g in zip(total, grads)]
        return total

    def _chunk_gradients(self, role: str, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
        net = self.nets[role]
        if not self.compile_real:
            params = [p for p in net.parameters() if p.ndim > 1]
            return [g.detach() for g in torch.autograd.grad(F.cross_entropy(net(x), y), params)]
        key = "class" if self.shared_theta else role  # one compiled function per network
        if key not in self._grad_fns:

            def loss(params, rest, x, y):
                return F.cross_entropy(functional_call(net, {**params, **rest}, (x,)), y)

            self._grad_fns[key] = torch.compile(grad(loss), dynamic=False, backend=self.backend)
        matched = {k: v.detach() for k, v in net.named_parameters() if v.ndim > 1}
        rest = {k: v.detach() for k, v in net.named_parameters() if v.ndim <= 1}
        out = self._grad_fns[key](matched, rest, x, y)
        return [out[k] for k in matched]

    def new_round(self, round_index: int, roles: tuple[str, ...], g: torch.Generator) -> None:
        self.nets.renew(roles, g, shared=self.shared_theta)
        trained = roles[:1] if self.shared_theta else roles
        self.optimizers = {r: torch.optim.SGD(self.nets[r].parameters(), lr=self.lr_net) for r in trained}
        for r in roles:
            self.nets[r].requires_grad_(True).train()

    def steps_per_round(self) -> int:
        return self.outer_loop

    def loss(self, role: str, batch: MatchBatch, pool: RealPool, g: torch.Generator) -> torch.Tensor:
        net = self.nets[role]
        params = [p for p in net.parameters() if p.ndim > 1]  # 1-D gradients are ignored by the distance
        real, syn = augmented_pair(self.dsa, batch, real_images(pool, batch), g)
        real_labels = pool.labels[batch.real_index.to(pool.labels.device)]
        syn_groups = batch.syn_groups.cpu()
        total = syn.new_zeros(())
        for group in range(batch.num_groups):
            ri = torch.nonzero(batch.real_groups == group).flatten().to(real.device)
            si = torch.nonzero(syn_groups == group).flatten().to(syn.device)
            if len(ri) == 0 or len(si) == 0:
                continue
            g_real = self._real_gradients(role, real[ri].contiguous(memory_format=torch.channels_last), real_labels[ri])
            g_syn = torch.autograd.grad(F.cross_entropy(net(syn[si]), batch.syn_labels[si]), params, create_graph=True)
            total = total + gradient_distance(g_real, list(g_syn))
        return total

    def after_step(
        self, step: int, role_data: dict[str, tuple[torch.Tensor, torch.Tensor]], g: torch.Generator
    ) -> None:
        if step == self.outer_loop - 1:
            return  # the reference does not train the network after the last outer step
        for role, (images, labels) in role_data.items():
            if role not in self.optimizers:
                continue  # a shared Theta' trains once, on the synthetic images, as the class network
            train_epochs(
                self.nets[role], self.optimizers[role], images, labels, self.inner_loop, self.batch_train, self.dsa, g
            )


def train_epochs(
    net: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    epochs: int,
    batch_size: int,
    dsa: DSA | None,
    g: torch.Generator,
) -> None:
    """Plain SGD epochs on an in-memory set (shuffled with ``g``, no DataLoader)."""
    n = len(images)
    for _ in range(epochs):
        order = torch.randperm(n, generator=g).to(images.device)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            x = images[idx]
            if dsa is not None:
                x = dsa.apply(x, dsa.sample(len(idx), tuple(x.shape[-2:]), g, one_family=True))
            loss = F.cross_entropy(net(x), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()


@dataclass
class DCOptions:
    """DC's own settings."""

    lr_net: float = option(0.01, "dc: learning rate of the network in the inner loop")
    outer_loop: int | None = option(None, "dc: image updates per round [by IPC, reference table]")
    inner_loop: int | None = option(None, "dc: network epochs between image updates [by IPC]")
    batch_train: int = option(256, "dc: batch size of the inner loop")


def _validate(cfg) -> None:
    require_finite("--lr-net", cfg.lr_net)
    require(cfg.batch_train >= 1, "batch sizes must be at least 1")


def _build(ctx: MethodContext) -> DC:
    c = ctx.cfg
    return DC(
        ctx.net_factory,
        ctx.device,
        ctx.dsa,
        c.lr_net,
        c.outer_loop,
        c.inner_loop,
        c.batch_train,
        compile_real=ctx.compile_hot_path,
        shared_theta=c.theta_prime == "shared",
    )


def _loops(cfg) -> dict:
    outer, inner = default_loops(cfg.ipc)
    return {"outer_loop": cfg.outer_loop or outer, "inner_loop": cfg.inner_loop or inner}


METHODS.register("dc")(
    MethodSpec(
        name="dc",
        summary="gradient matching while a network trains on the synthetic set",
        build=_build,
        defaults={"iterations": 1000, "lr_img": 0.1, "dsa": False, "lam": 0.1},
        theta_prime=("own", "shared"),
        options_class=DCOptions,
        validate=_validate,
        compile_from=200,
        resolve=_loops,
    )
)
