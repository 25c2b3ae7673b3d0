"""Differentiable Siamese Augmentation (DSA), batched.

One call applies ONE family per sample, drawn from the strategy
(``color_crop_cutout_flip_scale_rotate`` by default), with the reference
ranges: brightness +-0.5, saturation x[0, 2], contrast x[0.5, 1.5];
translation by up to 1/8 of the side with zero fill; one cutout square of
half the side; horizontal flip with p 0.5; scale in [1/1.2, 1.2] per axis;
rotation within +-15 degrees.

Parameters are drawn on the host from an explicit ``torch.Generator`` (no
global seeding, no device sync) and come in two shapes:

- :meth:`DSA.sample_groups` gives every sample of a group the same family
  and parameters; calling :meth:`DSA.apply` with the same parameters on the
  real and the synthetic batch is the siamese augmentation of condensation,
  for all classes (groups) at once;
- :meth:`DSA.sample` gives each sample its own parameters (evaluation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from stages.errors import ChddlError

FAMILIES = ("color", "crop", "cutout", "flip", "scale", "rotate")
DEFAULT_STRATEGY = "color_crop_cutout_flip_scale_rotate"


@dataclass
class DSAParams:
    """Per-sample augmentation parameters (CPU tensors of length N)."""

    family: torch.Tensor
    brightness: torch.Tensor
    saturation: torch.Tensor
    contrast: torch.Tensor
    shift_x: torch.Tensor
    shift_y: torch.Tensor
    cut_x: torch.Tensor
    cut_y: torch.Tensor
    flip: torch.Tensor
    scale_x: torch.Tensor
    scale_y: torch.Tensor
    angle: torch.Tensor

    def index(self, idx: torch.Tensor) -> "DSAParams":
        """Parameters of samples ``idx`` (e.g. expand group parameters to samples)."""
        return DSAParams(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})


class DSA:
    """The reference DSA strategy with its parameter ranges."""

    def __init__(
        self,
        strategy: str = DEFAULT_STRATEGY,
        flip_p: float = 0.5,
        scale: float = 1.2,
        rotate_deg: float = 15.0,
        crop_pad: float = 0.125,
        cutout: float = 0.5,
        brightness: float = 1.0,
        saturation: float = 2.0,
        contrast: float = 0.5,
    ) -> None:
        names = [s for s in strategy.split("_") if s]
        unknown = [s for s in names if s not in FAMILIES]
        if unknown or not names:
            raise ChddlError(
                f"unknown DSA strategy part(s) {unknown or strategy!r}; valid parts: {', '.join(FAMILIES)}"
            )
        self.strategy = strategy
        self.families = torch.tensor([FAMILIES.index(s) for s in names])
        self.flip_p, self.scale, self.rotate_deg = flip_p, scale, rotate_deg
        self.crop_pad, self.cutout = crop_pad, cutout
        self.brightness, self.saturation, self.contrast = brightness, saturation, contrast

    def sample(self, n: int, size: tuple[int, int], g: torch.Generator, one_family: bool = False) -> DSAParams:
        """Independent parameters for ``n`` samples of ``size`` (H, W); with
        ``one_family`` all samples share the family (the reference's training
        augmentation: one family per batch, per-sample parameters)."""
        H, W = size
        u = lambda: torch.rand(n, generator=g)  # noqa: E731
        sh, sw = int(H * self.crop_pad + 0.5), int(W * self.crop_pad + 0.5)
        ch, cw = int(H * self.cutout + 0.5), int(W * self.cutout + 0.5)
        lo = 1.0 / self.scale
        return DSAParams(
            family=self.families[torch.randint(len(self.families), (1 if one_family else n,), generator=g)]
            .expand(n)
            .clone(),
            brightness=(u() - 0.5) * self.brightness,
            saturation=u() * self.saturation,
            contrast=u() + self.contrast,
            shift_x=torch.randint(-sh, sh + 1, (n,), generator=g),
            shift_y=torch.randint(-sw, sw + 1, (n,), generator=g),
            cut_x=torch.randint(0, H + (1 - ch % 2), (n,), generator=g),
            cut_y=torch.randint(0, W + (1 - cw % 2), (n,), generator=g),
            flip=u() < self.flip_p,
            scale_x=u() * (self.scale - lo) + lo,
            scale_y=u() * (self.scale - lo) + lo,
            angle=(u() - 0.5) * 2 * self.rotate_deg / 180 * math.pi,
        )

    def sample_groups(
        self, groups: torch.Tensor, num_groups: int, size: tuple[int, int], g: torch.Generator
    ) -> DSAParams:
        """One parameter set per group, expanded to the samples of ``groups`` (CPU ids)."""
        return self.sample(num_groups, size, g).index(groups.cpu())

    def apply(self, x: torch.Tensor, p: DSAParams) -> torch.Tensor:
        """Augment (N, C, H, W) images ``x`` with parameters ``p`` (differentiable in x)."""
        fam = p.family
        present = torch.unique(fam).tolist()
        if len(present) == 1:
            return self._family(x, present[0], p)
        pieces, order = [], []
        for f in present:
            idx = torch.nonzero(fam == f).flatten()
            pieces.append(self._family(x[idx.to(x.device)], f, p.index(idx)))
            order.append(idx)
        inverse = torch.empty_like(fam)
        inverse[torch.cat(order)] = torch.arange(len(fam))
        return torch.cat(pieces)[inverse.to(x.device)]

    def _family(self, x: torch.Tensor, family: int, p: DSAParams) -> torch.Tensor:
        name = FAMILIES[family]
        dev, n = x.device, x.shape[0]
        col = lambda t: t.to(dev, x.dtype, non_blocking=True).view(n, 1, 1, 1)  # noqa: E731
        if name == "color":
            x = x + col(p.brightness)
            m = x.mean(dim=1, keepdim=True)
            x = (x - m) * col(p.saturation) + m
            m = x.mean(dim=(1, 2, 3), keepdim=True)
            return (x - m) * col(p.contrast) + m
        if name == "flip":
            return torch.where(col(p.flip.float()) > 0.5, x.flip(3), x)
        if name == "crop":
            return _translate(x, p.shift_x.to(dev), p.shift_y.to(dev))
        if name == "cutout":
            return _cutout(
                x,
                p.cut_x.to(dev),
                p.cut_y.to(dev),
                int(x.shape[2] * self.cutout + 0.5),
                int(x.shape[3] * self.cutout + 0.5),
            )
        theta = torch.zeros(n, 2, 3)
        if name == "scale":
            theta[:, 0, 0], theta[:, 1, 1] = p.scale_x, p.scale_y
        else:  # rotate
            cos, sin = torch.cos(p.angle), torch.sin(p.angle)
            theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
        grid = F.affine_grid(theta.to(dev, x.dtype), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, align_corners=False)


def _translate(x: torch.Tensor, tx: torch.Tensor, ty: torch.Tensor) -> torch.Tensor:
    """Shift by integer (tx, ty) per sample, filling with zeros (pad-1-and-clamp)."""
    n, _, H, W = x.shape
    rows = (torch.arange(H, device=x.device).view(1, H) + tx.view(n, 1) + 1).clamp(0, H + 1)
    cols = (torch.arange(W, device=x.device).view(1, W) + ty.view(n, 1) + 1).clamp(0, W + 1)
    padded = F.pad(x, [1, 1, 1, 1])
    b = torch.arange(n, device=x.device).view(n, 1, 1)
    return padded.permute(0, 2, 3, 1)[b, rows.view(n, H, 1), cols.view(n, 1, W)].permute(0, 3, 1, 2)


def _cutout(x: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Zero an h x w square centred (as the reference) at (cx, cy) per sample."""
    n, _, H, W = x.shape
    r = torch.arange(H, device=x.device).view(1, H) - (cx.view(n, 1) - h // 2)
    c = torch.arange(W, device=x.device).view(1, W) - (cy.view(n, 1) - w // 2)
    inside = ((r >= 0) & (r < h)).view(n, H, 1) & ((c >= 0) & (c < w)).view(n, 1, W)
    return x * (~inside).to(x.dtype).unsqueeze(1)
