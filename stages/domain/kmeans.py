"""Seeded K-Means (k-means++ init, Lloyd iterations, best of several restarts)."""

from __future__ import annotations

import torch


def _plus_plus(x: torch.Tensor, k: int, g: torch.Generator) -> torch.Tensor:
    centers = [x[torch.randint(len(x), (1,), generator=g)].squeeze(0)]
    d2 = torch.cdist(x, centers[0][None]).squeeze(1) ** 2
    for _ in range(1, k):
        probs = d2 / d2.sum() if d2.sum() > 0 else torch.full_like(d2, 1.0 / len(d2))
        centers.append(x[torch.multinomial(probs, 1, generator=g)].squeeze(0))
        d2 = torch.minimum(d2, torch.cdist(x, centers[-1][None]).squeeze(1) ** 2)
    return torch.stack(centers)


def kmeans(
    x: torch.Tensor, k: int, seed: int = 0, iters: int = 100, restarts: int = 4
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster rows of ``x`` (N, F) into ``k`` groups; returns (labels, centers)
    of the restart with the lowest inertia. Deterministic for a given seed."""
    x = x.to(torch.float64)
    g = torch.Generator().manual_seed(seed)
    best = None
    for _ in range(restarts):
        centers = _plus_plus(x, k, g)
        labels = torch.full((len(x),), -1, dtype=torch.int64)
        for _ in range(iters):
            new = torch.cdist(x, centers).argmin(dim=1)
            if torch.equal(new, labels):
                break
            labels = new
            sums = torch.zeros_like(centers).index_add_(0, labels, x)
            counts = torch.bincount(labels, minlength=k).to(x.dtype)
            empty = counts == 0
            centers = torch.where(empty[:, None], centers, sums / counts.clamp(min=1)[:, None])
        inertia = ((x - centers[labels]) ** 2).sum()
        if best is None or inertia < best[0]:
            best = (inertia, labels, centers)
    return best[1], best[2]
