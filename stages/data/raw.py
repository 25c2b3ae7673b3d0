"""What every dataset reader returns, before splitting and caching."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from stages.errors import ChddlError

TRAIN, TEST = 0, 1


@dataclass
class RawDataset:
    """Images already resized to the configured size.

    ``images`` is (N, 3, S, S) uint8; ``split`` is None when the source
    defines no split (ingestion then draws a stratified one).
    """

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    domains: torch.Tensor | None = None
    domain_names: list[str] | None = None
    split: torch.Tensor | None = None
    skipped: list[str] = field(default_factory=list)
    source_format: str = ""

    def subset(self, keep: torch.Tensor) -> "RawDataset":
        """The images selected by the boolean mask ``keep``, with their labels, domains and split."""
        return RawDataset(
            images=self.images[keep],
            labels=self.labels[keep],
            class_names=self.class_names,
            domains=None if self.domains is None else self.domains[keep],
            domain_names=self.domain_names,
            split=None if self.split is None else self.split[keep],
            skipped=self.skipped,
            source_format=self.source_format,
        )

    def check(self, origin: str) -> None:
        """Reject inconsistent lengths, labels out of range and single-class data."""
        n = self.images.shape[0]
        if n == 0:
            raise ChddlError(f"{origin} holds no images")
        for name, t in (("labels", self.labels), ("domains", self.domains), ("split", self.split)):
            if t is not None and t.shape[0] != n:
                raise ChddlError(f"{origin}: '{name}' has {t.shape[0]} entries but there are {n} images")
        if self.labels.min() < 0 or self.labels.max() >= len(self.class_names):
            raise ChddlError(f"{origin}: labels must lie in 0..{len(self.class_names) - 1} (one per class name)")
        present = torch.unique(self.labels).numel()
        if present < 2:
            raise ChddlError(f"{origin} has a single class; condensation needs at least 2 classes")
        if self.domains is not None and self.domain_names is not None:
            if self.domains.min() < 0 or self.domains.max() >= len(self.domain_names):
                raise ChddlError(f"{origin}: domains must lie in 0..{len(self.domain_names) - 1}")
        if self.split is not None and not bool(((self.split == TRAIN) | (self.split == TEST)).all()):
            raise ChddlError(f"{origin}: 'split' must hold 0 (train) or 1 (test) only")
