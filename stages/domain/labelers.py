"""Pseudo-domain labelers (paper section 3.1 and the Table 6 ablation).

Each labeler maps the training images to D labels in 0..D-1 and, where it
has one, a per-image scalar score.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from stages.domain.features import fft_log_features, fft_scores, logvar_features
from stages.domain.kmeans import kmeans
from stages.errors import ChddlError
from stages.progress import NullProgress, Progress
from stages.registry import Registry


@dataclass
class LabelerInput:
    """What a labeler may look at. ``true_domains`` is only for ``oracle``."""

    images: torch.Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_domains: int
    beta: float
    seed: int
    true_domains: torch.Tensor | None = None
    kmeans_restarts: int = 4
    logvar_layers: int = 2
    chunk_size: int = 4096
    device: torch.device = torch.device("cpu")
    progress: Progress = NullProgress()


@dataclass
class LabelerOutput:
    labels: torch.Tensor
    scores: torch.Tensor | None


Labeler = Callable[[LabelerInput], LabelerOutput]
LABELERS: Registry[Labeler] = Registry("labeler")

#: the settings of ``chddl label`` a labeler may read besides D; those it does not read leave its cache key
OPTIONAL_SETTINGS = ("beta", "kmeans_restarts", "logvar_layers", "seed")


def reads(*settings: str) -> Callable[[Labeler], Labeler]:
    """Declare which of :data:`OPTIONAL_SETTINGS` a labeler reads (put it under ``@LABELERS.register``)."""
    unknown = set(settings) - set(OPTIONAL_SETTINGS)
    if unknown:
        raise ValueError(f"unknown labeler settings {sorted(unknown)}; known: {', '.join(OPTIONAL_SETTINGS)}")

    def mark(fn: Labeler) -> Labeler:
        fn.reads = settings  # type: ignore[attr-defined]
        return fn

    return mark


def settings_read(name: str) -> tuple[str, ...]:
    """The optional settings labeler ``name`` reads (none unless it declares them with :func:`reads`)."""
    return getattr(LABELERS.get(name), "reads", ())


def mean_sort(scores: torch.Tensor, num_domains: int) -> torch.Tensor:
    """Rank ascending and cut into D equal slices: d = floor((rank - 1) / (N / D)).

    Ties are broken by image index, so the result is deterministic; slice
    sizes differ by at most one.
    """
    n = len(scores)
    order = torch.argsort(scores, stable=True)
    rank = torch.empty(n, dtype=torch.int64)
    rank[order] = torch.arange(n)
    return (rank * num_domains) // n


def _ordered_kmeans(features: torch.Tensor, scores: torch.Tensor, inp: LabelerInput) -> torch.Tensor:
    labels, _ = kmeans(features, inp.num_domains, seed=inp.seed, restarts=inp.kmeans_restarts)
    # Name clusters by ascending mean score, so label 0 means "lowest" as in mean-sort.
    means = torch.stack(
        [
            scores[labels == k].mean() if (labels == k).any() else torch.tensor(float("inf"), dtype=scores.dtype)
            for k in range(inp.num_domains)
        ]
    )
    remap = torch.empty(inp.num_domains, dtype=torch.int64)
    remap[torch.argsort(means, stable=True)] = torch.arange(inp.num_domains)
    return remap[labels]


@LABELERS.register("fft")
@reads("beta")
def fft_mean_sort(inp: LabelerInput) -> LabelerOutput:
    """FFT mean amplitude of the central beta window, then Mean-Sort (the paper's default)."""
    scores = fft_scores(inp.images, inp.beta, inp.chunk_size, inp.device, inp.progress)
    return LabelerOutput(mean_sort(scores, inp.num_domains), scores)


@LABELERS.register("fft-kmeans")
@reads("beta", "kmeans_restarts", "seed")
def fft_kmeans(inp: LabelerInput) -> LabelerOutput:
    """K-Means on the flattened log-amplitude of the central beta window."""
    features = fft_log_features(inp.images, inp.beta, inp.chunk_size, inp.device, inp.progress)
    scores = features.mean(dim=1)
    return LabelerOutput(_ordered_kmeans(features, scores, inp), scores)


def _logvar(inp: LabelerInput) -> torch.Tensor:
    return logvar_features(
        inp.images, inp.mean, inp.std, inp.logvar_layers, inp.seed, min(inp.chunk_size, 1024), inp.device, inp.progress
    )


@LABELERS.register("logvar")
@reads("logvar_layers", "seed")
def logvar_mean_sort(inp: LabelerInput) -> LabelerOutput:
    """Mean log-variance of early (random, seeded) ConvNet features, then Mean-Sort."""
    scores = _logvar(inp).mean(dim=1)
    return LabelerOutput(mean_sort(scores, inp.num_domains), scores)


@LABELERS.register("logvar-kmeans")
@reads("logvar_layers", "kmeans_restarts", "seed")
def logvar_kmeans(inp: LabelerInput) -> LabelerOutput:
    """K-Means on the per-channel log-variances of early ConvNet features."""
    features = _logvar(inp)
    return LabelerOutput(_ordered_kmeans(features, features.mean(dim=1), inp), features.mean(dim=1))


@LABELERS.register("random")
@reads("seed")
def random_labels(inp: LabelerInput) -> LabelerOutput:
    """A seeded random permutation cut into D equal slices (the ablation's control)."""
    g = torch.Generator().manual_seed(inp.seed)
    return LabelerOutput(mean_sort(torch.randperm(len(inp.images), generator=g).double(), inp.num_domains), None)


@LABELERS.register("oracle")
def oracle(inp: LabelerInput) -> LabelerOutput:
    """The true domain labels (upper bound of the ablation); D is their number."""
    if inp.true_domains is None:
        raise ChddlError("labeler 'oracle' needs true domain labels, and this dataset has none; pick another --labeler")
    return LabelerOutput(inp.true_domains.clone(), None)
