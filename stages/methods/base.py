"""The interface every base condensation method implements.

A method matches a synthetic batch against real images *grouped* by some
label: by class for the class loss, by pseudo-domain for CHDDL's domain
loss. It keeps one parameter set per role (``"class"`` = Theta,
``"domain"`` = Theta'); the domain-aware wrapper in ``stages.domain`` asks
for the second role, the methods never import it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable

import torch

from stages.registry import Registry

ROLES = ("class", "domain")


class RealPool:
    """Normalised real training images on the device, drawn per group by indexing."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images = images
        self.labels = labels  # class labels, on the images' device

    def draw(
        self, groups: torch.Tensor, num_groups: int, per_group: int, g: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Up to ``per_group`` random images of each group, without replacement.

        ``groups`` (CPU) gives each pool image's group. Returns (indices,
        group ids), both CPU, sorted by group; one vectorised shuffle.
        """
        key = groups.to(torch.float64) + torch.rand(len(groups), generator=g, dtype=torch.float64)
        order = torch.argsort(key)
        sorted_groups = groups[order]
        starts = torch.searchsorted(sorted_groups, torch.arange(num_groups))
        rank = torch.arange(len(order)) - starts[sorted_groups]
        keep = rank < per_group
        return order[keep], sorted_groups[keep]


@dataclass
class MatchBatch:
    """One matching problem: real images vs synthetic images, both grouped.

    ``real_*`` index into the pool; synthetic tensors carry their class
    labels (needed by gradient/trajectory matching) and group ids.
    """

    real_index: torch.Tensor
    real_groups: torch.Tensor
    syn: torch.Tensor
    syn_labels: torch.Tensor
    syn_groups: torch.Tensor
    num_groups: int
    focus: int | None = None  # the one group this batch is about (Algorithm 1's per-domain steps), else None


class BaseMethod(ABC):
    """A base condensation method: per round, fresh parameters; per step, a loss."""

    #: the paper's lambda for this base method (L = L_cls + lambda * L_dom)
    default_lambda: float = 0.1
    #: whether the class loss is a sum of per-class terms, each depending only on
    #: that class's images (DM, DC), so Algorithm 1 can take one step per class
    splits_by_class: bool = True

    @abstractmethod
    def new_round(self, round_index: int, roles: tuple[str, ...], g: torch.Generator) -> None:
        """Start an outer iteration: (re)initialise the parameters of each role."""

    def steps_per_round(self) -> int:
        """Image updates per round (DC's outer loop; 1 for DM)."""
        return 1

    @abstractmethod
    def loss(self, role: str, batch: MatchBatch, pool: RealPool, g: torch.Generator) -> torch.Tensor:
        """Matching loss of ``batch`` under the parameters of ``role``."""

    def after_update(self) -> None:
        """Hook after every optimiser step (MTT keeps its learned lr positive here)."""

    def extra_parameter_groups(self) -> list[dict]:
        """Learnable tensors the method owns besides the images (MTT's synthetic
        lr): ``{"name", "params", "lr"}`` each, optimised with SGD, momentum 0.5."""
        return []

    def joint_loss(
        self,
        class_batch: MatchBatch,
        domain_batch: MatchBatch,
        pool: RealPool,
        real_weights: torch.Tensor,
        g: torch.Generator,
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Class and domain losses from ONE forward pass of the real images,
        for methods whose Theta' is Theta (DM). Both batches hold the same
        real images (drawn by class); ``real_weights`` re-weights them within
        each domain so the domain means estimate uniform per-domain draws.
        Returns None when the method cannot share (the caller then computes
        the two losses separately)."""
        return None

    def after_step(
        self, step: int, role_data: dict[str, tuple[torch.Tensor, torch.Tensor]], g: torch.Generator
    ) -> None:
        """Hook after each image update (DC trains its networks here).

        ``role_data[role]`` is the (detached) synthetic training set of that
        role: the images for ``class``, the domain views for ``domain``.
        """


MethodFactory = Callable[..., BaseMethod]
METHODS: Registry[MethodFactory] = Registry("base method")
