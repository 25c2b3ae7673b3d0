"""SRe2L's recover step (Yin et al., 2023) as a base method, and its CHDDL form.

Recover: synthetic images, from noise, minimise the teacher's cross-entropy
to their class plus ``r_bn`` times the distance between the batch-norm input
statistics of the synthetic batch and the teacher's running statistics
(per layer ||var - running_var||_2 + ||mean - running_mean||_2, the first
layer's term x ``first_bn_multiplier``), with a random roll of up to
``jitter`` pixels and a random horizontal flip per step. The whole set is one
batch (SRe2L batches one image per class; with PACS's 7 classes that batch
would give noisy statistics). The optimiser (Adam, betas 0.5 / 0.9, cosine
lr) and the clip of the pixels to their valid range belong to the loop
(``stages.condense`` sets them for this base).

SRe2L + CHDDL, a decision the paper leaves open (appendix A.3 gives only
its results). Here Theta' is the teacher itself, and L_dom matches, for each
pseudo-domain d, the batch-norm input statistics of the d-views of all
synthetic images against those of the real images of pseudo-domain d (the
teacher in evaluation mode, computed once per teacher and labels and cached,
``stages.teacher.domain_statistics``), with the same layer weights and
``r_bn``, averaged over the domains present (so lambda = 1 weighs the
domain statistics as the global ones). Alternatives not taken: a teacher
per pseudo-domain (D more trainings, and a decoupled method would then
need D relabellings); the cross-entropy of the views (a view is a masked
fraction of an image, and the teacher's class on it carries no domain
information); matching the real per-domain means of penultimate features
(that is DM's loss on the teacher, not SRe2L's).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from stages.config import option, require, require_finite
from stages.methods.base import METHODS, BaseMethod, MatchBatch, MethodContext, MethodSpec, RealPool
from stages.sharding import global_sum, replicated_share


def batch_norms(net: nn.Module) -> list[nn.BatchNorm2d]:
    """The network's 2-d batch-norm layers, in forward order of definition."""
    return [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]


class BatchNormInputs:
    """Forward hooks recording the input of every batch-norm layer of a network."""

    def __init__(self, net: nn.Module) -> None:
        self.layers = batch_norms(net)
        self.inputs: list[torch.Tensor | None] = [None] * len(self.layers)
        self._handles = [layer.register_forward_hook(self._hook(i)) for i, layer in enumerate(self.layers)]

    def _hook(self, i: int):
        def record(_module, args, _output):
            self.inputs[i] = args[0]

        return record

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def group_statistics(
    x: torch.Tensor, groups: torch.Tensor, num_groups: int, spread: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per group, the per-channel mean and (population) variance of a batch-norm
    input x (N, C, H, W) over the group's images and pixels: (G, C) each, and
    the group's image count (G,); with ``spread``, over the images of all
    torchrun ranks (each passes its own). Sums over images accumulate in float64
    (see :func:`batch_moments`)."""
    groups = groups.to(x.device)
    s1 = x.mean(dim=(2, 3)).double()
    s2 = (x * x).mean(dim=(2, 3)).double()
    counts = torch.zeros(num_groups, device=x.device, dtype=torch.float64).index_add(
        0, groups, torch.ones_like(s1[:, 0])
    )
    sum1 = torch.zeros(num_groups, x.shape[1], device=x.device, dtype=torch.float64).index_add(0, groups, s1)
    sum2 = torch.zeros(num_groups, x.shape[1], device=x.device, dtype=torch.float64).index_add(0, groups, s2)
    counts, sum1, sum2 = (global_sum(t, spread) for t in (counts, sum1, sum2))
    denom = counts.clamp(min=1).unsqueeze(1)
    mean = sum1 / denom
    return mean.to(x.dtype), (sum2 / denom - mean * mean).clamp(min=0).to(x.dtype), counts.to(x.dtype)


def batch_moments(x: torch.Tensor, spread: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-channel mean and population variance of a batch-norm input x (N, C, H, W) over its images and
    pixels (two passes); with ``spread``, over the images of all torchrun ranks (each passes its own).

    The sums accumulate in float64: the float32 moments then hardly ever depend on the order in which
    images (or ranks) are added, so moments over a batch split across ranks are the one-process ones."""
    count = global_sum(torch.tensor(float(x.shape[0] * x.shape[2] * x.shape[3]), dtype=torch.float64), spread)
    mean = (global_sum(x.sum(dim=(0, 2, 3), dtype=torch.float64), spread) / count.to(x.device)).to(x.dtype)
    # The variance's gradient through the mean is -2/count * sum(x - mean) = 0: computed, it is rounding noise
    # summed in an order that depends on how the batch is split, so it is left out.
    centred = (x - mean.detach().view(1, -1, 1, 1)) ** 2
    var = global_sum(centred.sum(dim=(0, 2, 3), dtype=torch.float64), spread) / count.to(x.device)
    return mean, var.to(x.dtype)


@torch.no_grad()
def real_statistics(
    teacher: nn.Module, images: torch.Tensor, groups: torch.Tensor, num_groups: int, chunk: int = 128
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per batch-norm layer, (mean, var) of its input over the real images of
    each group (G, C), the teacher in evaluation mode; computed in chunks (each chunk's inputs are held in
    float64: 128 images keep that below the recover step's own peak, 512 added ~1 GB at 32 px)."""
    teacher.eval()
    hooks = BatchNormInputs(teacher)
    try:
        sums: list[list[torch.Tensor]] | None = None
        counts = torch.zeros(num_groups, dtype=torch.float64)
        for start in range(0, len(images), chunk):
            x, grp = images[start : start + chunk], groups[start : start + chunk].to(images.device)
            teacher(x)
            counts += torch.bincount(grp.cpu(), minlength=num_groups).double()
            parts = []
            for h in hooks.inputs:
                h = h.double()
                s1 = torch.zeros(num_groups, h.shape[1], dtype=torch.float64, device=h.device)
                s2 = torch.zeros_like(s1)
                parts.append([s1.index_add(0, grp, h.mean(dim=(2, 3))), s2.index_add(0, grp, (h * h).mean(dim=(2, 3)))])
            sums = parts if sums is None else [[a + b for a, b in zip(p, q)] for p, q in zip(sums, parts)]
    finally:
        hooks.remove()
    denom = counts.clamp(min=1).unsqueeze(1).to(images.device)
    out = []
    for s1, s2 in sums or []:
        mean = s1 / denom
        out.append((mean.float(), (s2 / denom - mean * mean).clamp(min=0).float()))
    return out


def statistic_distance(
    mean: torch.Tensor, var: torch.Tensor, target_mean: torch.Tensor, target_var: torch.Tensor
) -> torch.Tensor:
    """SRe2L's per-layer term: ||var - target_var||_2 + ||mean - target_mean||_2 (over the last dim)."""
    return torch.linalg.vector_norm(var - target_var, dim=-1) + torch.linalg.vector_norm(mean - target_mean, dim=-1)


class SRe2L(BaseMethod):
    """Recover against a frozen teacher with batch norm (no real images are forwarded)."""

    default_lambda = 1.0
    #: the statistics are of the whole synthetic batch: one class alone has other statistics
    splits_by_class = False
    sums_statistics = True

    def __init__(
        self,
        teacher: nn.Module,
        r_bn: float,
        first_bn_multiplier: float,
        jitter: int,
        flip: bool,
        domain_stats: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> None:
        self.teacher = teacher.eval()
        self.hooks = BatchNormInputs(teacher)
        if not self.hooks.layers:
            raise ValueError("SRe2L needs a teacher with batch norm")
        self.r_bn, self.jitter, self.flip = r_bn, jitter, flip
        self.weights = [first_bn_multiplier] + [1.0] * (len(self.hooks.layers) - 1)
        self.domain_stats = domain_stats

    def new_round(self, round_index: int, roles: tuple[str, ...], g: torch.Generator) -> None:
        """Nothing to renew: the teacher is fixed."""

    def _augment(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        if self.jitter:
            dx, dy = (int(v) for v in torch.randint(0, self.jitter + 1, (2,), generator=g))
            x = torch.roll(x, shifts=(dx, dy), dims=(2, 3))
        if self.flip and bool(torch.rand((), generator=g) < 0.5):
            x = x.flip(3)
        return x

    def loss(self, role: str, batch: MatchBatch, pool: RealPool, g: torch.Generator) -> torch.Tensor:
        self.teacher.eval()
        logits = self.teacher(self._augment(batch.syn, g))
        if role == "class":
            terms = []
            for layer, x, w in zip(self.hooks.layers, self.hooks.inputs, self.weights):
                mean, var = batch_moments(x, batch.spread)
                terms.append(w * statistic_distance(mean, var, layer.running_mean, layer.running_var))
            # the cross-entropy's mean over the whole batch (spread: this rank's images' share of it)
            count = global_sum(logits.new_tensor(float(len(logits))), batch.spread)
            ce = F.cross_entropy(logits, batch.syn_labels, reduction="sum") / count
            return ce + replicated_share(self.r_bn * torch.stack(terms).sum(), batch.spread)
        if self.domain_stats is None:
            raise ValueError("SRe2L's domain loss needs per-domain statistics")
        groups = batch.syn_groups.to(logits.device)
        total = logits.new_zeros(())
        for (t_mean, t_var), x, w in zip(self.domain_stats, self.hooks.inputs, self.weights):
            mean, var, counts = group_statistics(x, groups, batch.num_groups, batch.spread)
            total = total + w * statistic_distance(mean, var, t_mean, t_var)[counts > 0].mean()
        return replicated_share(self.r_bn * total, batch.spread)


#: SRe2L's image optimiser: Adam with these betas, lr decayed by a cosine over the run
SRE2L_BETAS = (0.5, 0.9)


@dataclass
class SRe2LOptions:
    """SRe2L's own settings."""

    r_bn: float = option(0.01, "sre2l: weight of the batch-norm statistics term (recover_cifar.sh)")
    first_bn_multiplier: float = option(10.0, "sre2l: extra weight of the first batch-norm layer's term")
    jitter: int = option(4, "sre2l: random roll of the images by up to this many pixels per step")
    flip: bool = option(True, "sre2l: random horizontal flip per step")


def _validate(cfg) -> None:
    require_finite("--r-bn", cfg.r_bn)
    require_finite("--first-bn-multiplier", cfg.first_bn_multiplier)
    require(cfg.r_bn >= 0 and cfg.first_bn_multiplier >= 0, "--r-bn and --first-bn-multiplier must be >= 0")
    require(cfg.jitter >= 0, f"--jitter must be >= 0, got {cfg.jitter}")
    require(not cfg.dsa, "sre2l augments with its own --jitter and --flip; drop --dsa")


def _build(ctx: MethodContext) -> SRe2L:
    if ctx.teacher is None:
        raise ValueError("SRe2L needs a teacher")
    c = ctx.cfg
    return SRe2L(ctx.teacher, c.r_bn, c.first_bn_multiplier, c.jitter, c.flip, ctx.domain_stats)


METHODS.register("sre2l")(
    MethodSpec(
        name="sre2l",
        title="SRe2L",
        summary="recovery from a teacher's batch-norm statistics (needs chddl train-teacher)",
        build=_build,
        # SRe2L's small-image recover (recover_cifar.sh): 1,000 iterations of Adam at 0.25; its jitter replaces DSA
        defaults={"iterations": 1000, "lr_img": 0.25, "dsa": False, "lam": 1.0, "mask_optimizer": "adam"},
        theta_prime=("shared",),
        theta_prime_why="its Theta' is the teacher (see stages/methods/sre2l.py)",
        options_class=SRe2LOptions,
        # no real image is forwarded, the teacher is the network, and its jitter replaces DSA
        ignores=("batch_real", "share_real", "dsa", "dsa_strategy", "arch"),
        needs="teacher",
        domain_terms="mean",
        continues=False,
        adam_images=True,
        image_betas=SRE2L_BETAS,
        clamp_images=True,
        validate=_validate,
    )
)
