"""The domain-aware module (paper section 3.2-3.3) as a wrapper of any base method.

Each synthetic image x_m has a learnable mask z_m of shape D x C x H x W;
alpha_m = softmax(z_m / tau) over D and the domain views
x_m^d = x_m * alpha_m^d sum back to x_m exactly. The objective is
L = L_cls + lambda * L_dom: L_cls is the base method's loss on real batches
grouped by class (parameters Theta), L_dom the same kind of loss on real
batches grouped by pseudo-domain against the views of all synthetic images
(parameters Theta'). Masks are discarded after condensation.
"""

from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from stages.methods.base import BaseMethod, MatchBatch, RealPool

MASK_INITS = ("constant", "normal")
MASK_CHANNELS = ("per-channel", "shared")
#: which views the domain loss sees per step: all D views of every image (the paper), or those of one pseudo-domain
DOMAIN_VIEWS = ("all", "one")


class DomainMasks(nn.Module):
    """Masks z (M, D, Cz, K, K); alpha = softmax(up(z) / tau) over D, with
    ``up`` the bilinear up-sampling of z to the image size (the identity at
    full resolution, the paper's masks) and Cz = C (``per-channel``, the
    paper) or 1 (``shared``: one mask for the three colour channels).

    A low ``resolution`` K forces each domain to own smooth regions, which
    is what the paper's section 3.2 describes; K = 1 gives every image one
    weight per domain. ``constant`` init gives uniform alpha = 1/D whatever
    the value; ``normal`` draws z ~ N(0, value^2), breaking the symmetry
    between domains from the start."""

    def __init__(
        self,
        num_images: int,
        num_domains: int,
        shape: tuple[int, int, int],
        init_value: float,
        init_mode: str,
        tau: float,
        g: torch.Generator,
        resolution: int | None = None,
        channels: str = "per-channel",
    ) -> None:
        super().__init__()
        c, h, w = shape
        zc = c if channels == "per-channel" else 1
        zh, zw = (h, w) if resolution is None else (resolution, resolution)
        size = (num_images, num_domains, zc, zh, zw)
        z = torch.full(size, init_value) if init_mode == "constant" else torch.randn(size, generator=g) * init_value
        self.z = nn.Parameter(z)
        self.tau = tau
        self.shape = shape

    def logits(self, rows: torch.Tensor | None = None, z: torch.Tensor | None = None) -> torch.Tensor:
        """z at the image's resolution, (M, D, Cz, H, W); of the images ``rows`` only when given, or of the
        mask tensor ``z`` given (a slice of this module's)."""
        z = (self.z if rows is None else self.z[rows]) if z is None else z
        h, w = self.shape[1:]
        if z.shape[-2:] == (h, w):
            return z
        up = F.interpolate(z.flatten(0, 1), size=(h, w), mode="bilinear", align_corners=False)
        return up.view(*z.shape[:3], h, w)

    def alpha(self, rows: torch.Tensor | None = None, z: torch.Tensor | None = None) -> torch.Tensor:
        """(M, D, C, H, W) per-pixel domain weights, summing to 1 over D (of the images ``rows`` when given,
        or of the masks ``z``)."""
        a = torch.softmax(self.logits(rows, z) / self.tau, dim=1)
        return a.expand(-1, -1, self.shape[0], -1, -1)

    def views(self, images: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """(M, D, C, H, W) domain views of (M, C, H, W) images (of the images ``rows`` when given)."""
        return (images if rows is None else images[rows]).unsqueeze(1) * self.alpha(rows)

    def views_from(self, images: torch.Tensor, z: torch.Tensor, domain: int | None = None) -> torch.Tensor:
        """(M, D, C, H, W) domain views of ``images`` under the masks ``z`` (the same images' slice of z); with
        ``domain``, (M, 1, C, H, W): only that pseudo-domain's views (the softmax still over all D)."""
        alpha = self.alpha(z=z)
        return images.unsqueeze(1) * (alpha if domain is None else alpha[:, domain : domain + 1])


def mask_diagnostics(alpha: torch.Tensor, block: int = 128) -> dict:
    """Whether the masks form regions: of alpha (M, D, C, H, W),

    - ``mean_max_alpha``: mean over pixels of the largest weight (1/D: uniform, 1: one domain per pixel);
    - ``neighbour_agreement``: how often two horizontally or vertically adjacent
      pixels have the same winning domain, beside ``chance_agreement``, what
      independent pixels with these domain shares would give (regions: near 1);
    - ``domain_share``: each domain's share of winning pixels, averaged over images;
    - ``dominant_share``: the largest domain's share within an image, averaged over images;
    - ``tied_fraction``: pixels where the two largest weights are equal (uniform masks).

    Counted ``block`` images at a time, so its memory stays a few times a block's masks.
    """
    if alpha.shape[2] > 1 and alpha.stride(2) == 0:  # one mask expanded over the colour channels: its figures
        alpha = alpha[:, :, :1]
    d = alpha.shape[1]
    top, agree, pairs, tied = torch.zeros((), dtype=torch.float64), 0, 0, 0
    shares = []
    for i in range(0, len(alpha), block):
        a = alpha[i : i + block].detach().float()
        top2 = a.topk(min(2, d), dim=1).values
        top += top2[:, 0].sum(dtype=torch.float64)
        tied += int(((top2[:, 0] - top2[:, -1]) <= 1e-6).sum()) if d > 1 else top2[:, 0].numel()
        win = a.argmax(dim=1)  # (block, C, H, W)
        for same in (win[..., 1:, :] == win[..., :-1, :], win[..., :, 1:] == win[..., :, :-1]):
            agree, pairs = agree + int(same.sum()), pairs + same.numel()
        flat = win.flatten(1)
        shares.append(torch.stack([(flat == k).float().mean(dim=1) for k in range(d)], dim=1))  # one domain at a time
    pixels = alpha[:, 0].numel()
    share = torch.cat(shares)  # (M, D)
    return {
        "mean_max_alpha": round(float(top / pixels), 4),
        "neighbour_agreement": round(agree / pairs, 4) if pairs else 1.0,
        "chance_agreement": round(float((share**2).sum(dim=1).mean()), 4),
        "domain_share": [round(float(v), 4) for v in share.mean(dim=0)],
        "dominant_share": round(float(share.max(dim=1).values.mean()), 4),
        "tied_fraction": round(tied / pixels, 4),
    }


class ClassObjective:
    """The base method alone: L = L_cls on class-grouped real batches."""

    roles: tuple[str, ...] = ("class",)

    def __init__(
        self,
        base: BaseMethod,
        pool: RealPool,
        class_of_pool: torch.Tensor,
        num_classes: int,
        syn_labels: torch.Tensor,
        batch_real: int,
        classes: torch.Tensor | None = None,
    ) -> None:
        self.base, self.pool = base, pool
        self.class_of_pool, self.num_classes = class_of_pool.cpu(), num_classes
        self.syn_labels, self.batch_real = syn_labels, batch_real
        # ``classes``: the classes this process computes (torchrun, stages.sharding); None: all of them
        self.classes = classes
        if classes is not None:
            self.own_rows = torch.nonzero(torch.isin(syn_labels.cpu(), classes)).flatten().to(syn_labels.device)

    def extra_parameters(self) -> list[nn.Parameter]:
        return []

    @property
    def separable(self) -> bool:
        """Whether L_cls and L_dom come from separate graphs, so a summed step
        may back-propagate one before building the other (same gradient,
        peak memory of the larger graph instead of both)."""
        return True

    @property
    def rows(self) -> torch.Tensor | None:
        """The synthetic images this process computes with (None: all of them)."""
        return None if self.classes is None else self.own_rows

    def own_real(self, idx: torch.Tensor, groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A real draw (pool indices and their groups) cut to the images of this process's classes."""
        if self.classes is None:
            return idx, groups
        keep = torch.isin(self.class_of_pool[idx], self.classes)
        return idx[keep], groups[keep]

    def class_batch(self, idx: torch.Tensor, groups: torch.Tensor, images: torch.Tensor) -> MatchBatch:
        """The class-loss batch of a class-grouped real draw: under torchrun, the same draw as one process
        makes, cut to this process's classes (spread over the ranks when the loss does not split by class)."""
        syn, syn_labels = images, self.syn_labels
        if self.classes is not None:
            idx, groups = self.own_real(idx, groups)
            syn, syn_labels = images[self.own_rows], syn_labels[self.own_rows]
        spread = self.classes is not None and not self.base.splits_by_class
        return MatchBatch(idx, groups, syn, syn_labels, syn_labels, self.num_classes, spread=spread)

    def class_loss(self, images: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        idx, groups = self.pool.draw(self.class_of_pool, self.num_classes, self.batch_real, g)
        return self.base.loss("class", self.class_batch(idx, groups, images), self.pool, g)

    def domain_loss(self, images: torch.Tensor, g: torch.Generator) -> torch.Tensor | None:
        return None

    def class_losses(
        self, images: torch.Tensor, g: torch.Generator
    ) -> Iterator[tuple[torch.Tensor | None, torch.Tensor]]:
        """Algorithm 1's class steps: (rows of the images it moves, loss) per
        class, from one class-grouped real draw; a base whose loss does not
        split by class gives one (None, L_cls)."""
        if not self.base.splits_by_class:
            yield None, self.class_loss(images, g)
            return
        idx, groups = self.pool.draw(self.class_of_pool, self.num_classes, self.batch_real, g)
        for c in range(self.num_classes):
            rows = torch.nonzero(self.syn_labels == c).flatten()
            real = groups == c
            batch = MatchBatch(
                idx[real],
                groups[real],
                images[rows],
                self.syn_labels[rows],
                self.syn_labels[rows],
                self.num_classes,
                focus=c,
            )
            yield rows, self.base.loss("class", batch, self.pool, g)

    def losses(self, images: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(L_cls, L_dom) for one summed step; L_dom is None without CHDDL."""
        return self.class_loss(images, g), self.domain_loss(images, g)

    def training_sets(self, images: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """What each role's network trains on between steps (DC's inner loop)."""
        return {"class": (images.detach(), self.syn_labels)}


class DomainAwareObjective(ClassObjective):
    """CHDDL: adds lambda * L_dom on pseudo-domain batches vs the domain views."""

    roles = ("class", "domain")

    def __init__(
        self,
        base: BaseMethod,
        pool: RealPool,
        class_of_pool: torch.Tensor,
        num_classes: int,
        syn_labels: torch.Tensor,
        batch_real: int,
        domain_of_pool: torch.Tensor,
        masks: DomainMasks,
        share_real: bool = False,
        classes: torch.Tensor | None = None,
        one_domain_scale: float | None = None,
    ) -> None:
        super().__init__(base, pool, class_of_pool, num_classes, syn_labels, batch_real, classes)
        self.domain_of_pool = domain_of_pool.cpu()
        self.masks = masks
        self.num_domains = masks.z.shape[1]
        self.share_real = share_real
        # ``--domain-views one``: each step draws one pseudo-domain d and L_dom is this factor x d's term alone,
        # an unbiased estimate of the all-domain loss (D for a loss that sums its domains' terms, 1 for a mean)
        self.one_domain_scale = one_domain_scale
        class_sizes = torch.bincount(self.class_of_pool, minlength=num_classes).to(torch.float64)
        # 1 / inclusion probability of an image of each class in a class-grouped draw
        self.class_weight = class_sizes / class_sizes.clamp(max=batch_real)

    def extra_parameters(self) -> list[nn.Parameter]:
        return [self.masks.z]

    @property
    def separable(self) -> bool:
        return not self.share_real or type(self.base).joint_loss is BaseMethod.joint_loss

    def draw_domain(self, g: torch.Generator) -> int | None:
        """The pseudo-domain whose views this step's domain loss sees (``--domain-views one``), drawn uniformly;
        None: all of them."""
        if self.one_domain_scale is None:
            return None
        return int(torch.randint(self.num_domains, (1,), generator=g))

    def _scaled(self, loss: torch.Tensor, domain: int | None) -> torch.Tensor:
        return loss if domain is None else self.one_domain_scale * loss

    def _view_groups(
        self, rows: torch.Tensor | None = None, domain: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Class labels and pseudo-domains of the flattened views (image-major) of all images, or of ``rows``;
        with ``domain``, of that domain's views alone (one per image)."""
        labels = self.syn_labels if rows is None else self.syn_labels[rows]
        if domain is not None:
            return labels, torch.full_like(labels, domain)
        d = self.num_domains
        return labels.repeat_interleave(d), torch.arange(d, device=labels.device).repeat(len(labels))

    def _flat_views(
        self, images: torch.Tensor, rows: torch.Tensor | None = None, domain: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if domain is not None:
            views = (images if rows is None else images[rows]) * self.masks.alpha(rows)[:, domain]
            return views, *self._view_groups(rows, domain)
        return self.masks.views(images, rows).flatten(0, 1), *self._view_groups(rows)

    def domain_loss(self, images: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        domain = self.draw_domain(g)
        views, labels, domains = self._flat_views(images, self.rows, domain)
        idx, groups = self.own_real(*self.pool.draw(self.domain_of_pool, self.num_domains, self.batch_real, g))
        batch = MatchBatch(idx, groups, views, labels, domains, self.num_domains, spread=self.classes is not None)
        return self._scaled(self.base.loss("domain", batch, self.pool, g), domain)

    def step_domains(self, g: torch.Generator) -> list[int]:
        """The pseudo-domains Algorithm 1 takes a step on this iteration: all of them, or with
        ``--domain-views one`` one drawn uniformly."""
        domain = self.draw_domain(g)
        return list(range(self.num_domains)) if domain is None else [domain]

    def domain_loss_of(self, d: int, images: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Algorithm 1's step for pseudo-domain d: real images of d against the
        d-views of all synthetic images (views from the current masks)."""
        views, labels, domains = self._flat_views(images, domain=d)
        idx, groups = self.pool.draw(self.domain_of_pool, self.num_domains, self.batch_real, g)
        real = groups == d
        batch = MatchBatch(idx[real], groups[real], views, labels, domains, self.num_domains, focus=d)
        return self.base.loss("domain", batch, self.pool, g)

    def losses(self, images: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """With ``share_real``, one class-grouped real draw (one forward pass)
        serves both losses when the base method supports it. Within a domain
        each real image is weighted by 1 / its class's inclusion probability,
        so the domain's real mean estimates that of a uniform draw from the
        domain (a ratio estimator: consistent, not exactly unbiased)."""
        if not self.share_real:
            return super().losses(images, g)
        class_batch = self.class_batch(
            *self.pool.draw(self.class_of_pool, self.num_classes, self.batch_real, g), images
        )
        idx, groups = class_batch.real_index, class_batch.real_groups
        domain = self.draw_domain(g)
        if self.base.lazy_views and self.rows is None:
            # the base embeds the views chunk by chunk from the images and masks (MatchBatch.masks)
            labels, domains = self._view_groups(domain=domain)
            domain_batch = MatchBatch(
                idx,
                self.domain_of_pool[idx],
                images,
                labels,
                domains,
                self.num_domains,
                masks=self.masks,
                view_domain=domain,
            )
        else:
            views, labels, domains = self._flat_views(images, self.rows, domain)
            domain_batch = MatchBatch(
                idx, self.domain_of_pool[idx], views, labels, domains, self.num_domains, spread=self.classes is not None
            )
        joint = self.base.joint_loss(class_batch, domain_batch, self.pool, self.class_weight[groups], g)
        if joint is None:
            return super().losses(images, g)
        return joint[0], self._scaled(joint[1], domain)

    def training_sets(self, images: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        with torch.no_grad():
            views, labels, _ = self._flat_views(images)
        return {"class": (images.detach(), self.syn_labels), "domain": (views, labels)}
