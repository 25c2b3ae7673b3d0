"""The built-in demo dataset: shapes drawn in four visual domains.

Generated from a seed, nothing shipped or downloaded. A class is a shape
(its identity survives the domain change); a domain is a rendering style
that changes colour statistics, texture and edge content the way PACS's
photo / cartoon / sketch / painting domains do.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from stages.data.raw import RawDataset

CLASSES = ("disk", "square", "triangle", "cross", "ring", "bars")
DOMAINS = ("photo", "cartoon", "sketch", "infrared")
#: images per class in each domain: unbalanced on purpose, like real data
PER_CLASS = {"photo": 100, "cartoon": 80, "sketch": 120, "infrared": 60}
VERSION = 1


def _shape_mask(cls: str, x: torch.Tensor, y: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    rad = torch.sqrt(x**2 + y**2)
    if cls == "disk":
        return rad < r
    if cls == "square":
        return torch.maximum(x.abs(), y.abs()) < 0.8 * r
    if cls == "triangle":
        h = 0.9 * r
        return (y < 0.55 * h) & (1.73 * x.abs() < (y + h))
    if cls == "cross":
        arm = 0.3 * r
        return ((x.abs() < arm) & (y.abs() < r)) | ((y.abs() < arm) & (x.abs() < r))
    if cls == "ring":
        return (rad < r) & (rad > 0.6 * r)
    if cls == "bars":
        return (x.abs() < r) & (((y - 0.5 * r).abs() < 0.2 * r) | ((y + 0.5 * r).abs() < 0.2 * r))
    raise ValueError(cls)


def _masks(cls: str, n: int, res: int, g: torch.Generator) -> torch.Tensor:
    """(n, 1, res, res) float masks of one shape, randomly placed and rotated."""
    lin = torch.linspace(-1, 1, res)
    v, u = torch.meshgrid(lin, lin, indexing="ij")
    cx, cy = (torch.rand(2, n, 1, 1, generator=g) - 0.5) * 0.4
    r = 0.45 + 0.3 * torch.rand(n, 1, 1, generator=g)
    theta = (torch.rand(n, 1, 1, generator=g) - 0.5) * (math.pi / 4.5)
    du, dv = u - cx, v - cy
    x = torch.cos(theta) * du + torch.sin(theta) * dv
    y = -torch.sin(theta) * du + torch.cos(theta) * dv
    return _shape_mask(cls, x, y, r).float().unsqueeze(1)


def _smooth_noise(n: int, res: int, g: torch.Generator, cells: int) -> torch.Tensor:
    coarse = torch.rand(n, 3, cells, cells, generator=g)
    return F.interpolate(coarse, size=(res, res), mode="bicubic", align_corners=False).clamp(0, 1)


def _render(domain: str, mask: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """(n, 3, res, res) images in [0, 1] of ``mask`` in the style ``domain``."""
    n, _, res, _ = mask.shape
    edge = (mask - (-F.max_pool2d(-mask, 5, 1, 2))).clamp(0, 1)
    rgb = lambda lo, hi: lo + (hi - lo) * torch.rand(n, 3, 1, 1, generator=g)  # noqa: E731
    if domain == "photo":
        bg = 0.25 + 0.5 * _smooth_noise(n, res, g, 6) * rgb(0.5, 1.0)
        shade = torch.linspace(1.15, 0.6, res).view(1, 1, res, 1)
        fg = (rgb(0.15, 0.95) * shade).clamp(0, 1)
        img = bg * (1 - mask) + fg * mask
        return (img + 0.08 * torch.randn(img.shape, generator=g)).clamp(0, 1)
    if domain == "cartoon":
        bg = rgb(0.75, 1.0).expand(n, 3, res, res)
        fg = rgb(0.0, 1.0).pow(0.5)
        img = bg * (1 - mask) + fg * mask
        return img * (1 - edge) + 0.05 * edge
    if domain == "sketch":
        ink = (edge > 0.3).float() * (0.6 + 0.4 * torch.rand(n, 1, res, res, generator=g))
        return (0.97 - ink * 0.9).expand(n, 3, res, res).clone()
    if domain == "infrared":
        bg = 0.15 * _smooth_noise(n, res, g, 3)
        glow = F.avg_pool2d(mask, 9, 1, 4)
        cast = torch.tensor([1.0, 0.35, 0.1]).view(1, 3, 1, 1)
        img = bg + cast * (0.35 * glow + 0.6 * mask)
        return (img + 0.04 * torch.randn(img.shape, generator=g)).clamp(0, 1)
    raise ValueError(domain)


def generate(size: int = 32, seed: int = 0) -> RawDataset:
    """The demo dataset at ``size`` px: 6 shape classes x 4 domains, 2,160 images."""
    g = torch.Generator().manual_seed(seed)
    res = 2 * size  # draw at twice the size, then average down (anti-aliasing)
    images, labels, domains = [], [], []
    for d, domain in enumerate(DOMAINS):
        for c, cls in enumerate(CLASSES):
            n = PER_CLASS[domain]
            img = _render(domain, _masks(cls, n, res, g), g)
            images.append(F.avg_pool2d(img, 2))
            labels.append(torch.full((n,), c, dtype=torch.int64))
            domains.append(torch.full((n,), d, dtype=torch.int64))
    images_u8 = (torch.cat(images) * 255.0 + 0.5).clamp(0, 255).to(torch.uint8)
    return RawDataset(
        images=images_u8,
        labels=torch.cat(labels),
        class_names=list(CLASSES),
        domains=torch.cat(domains),
        domain_names=list(DOMAINS),
        source_format="builtin",
    )
