"""A typed, validated view of a ``dataset`` artifact for the later stages."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from stages.artifacts import Artifact
from stages.data.raw import TEST, TRAIN
from stages.data.zca import ZCA
from stages.errors import ChddlError
from stages.visual import denormalize


class Rows:
    """Some rows of an image tensor, gathered only when indexed: a selection of a
    large dataset without a second copy of it. Supports ``len``, ``shape``,
    ``device`` and indexing by a slice or an index tensor."""

    def __init__(self, images: torch.Tensor, rows: torch.Tensor) -> None:
        self.images, self.rows = images, rows.to(images.device)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.rows), *self.images.shape[1:]))

    @property
    def device(self) -> torch.device:
        return self.images.device

    def __getitem__(self, idx: Any) -> torch.Tensor:
        return self.images[self.rows[idx]]


class NormalizedRows(Rows):
    """Rows of uint8 images that come out normalised as :meth:`Dataset.normalized`
    makes them (float32, channels-last, the same values): a pool of real images
    then costs one byte per pixel instead of four."""

    def __init__(self, images: torch.Tensor, rows: torch.Tensor, mean: tuple, std: tuple) -> None:
        super().__init__(images, rows)
        self.mean = torch.tensor(mean, device=images.device, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=images.device, dtype=torch.float32).view(1, 3, 1, 1)

    def __getitem__(self, idx: Any) -> torch.Tensor:
        x = (super().__getitem__(idx).float().div_(255.0) - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last)


@dataclass
class Dataset:
    """Cached images (N, 3, S, S) uint8 with labels, split and optional true domains.

    True domains are kept for scoring and protocol selection only; no method
    reads them.
    """

    artifact: Artifact
    images: torch.Tensor
    labels: torch.Tensor
    split: torch.Tensor
    domains: torch.Tensor | None
    class_names: list[str]
    domain_names: list[str] | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    zca: ZCA | None = None

    @property
    def fingerprint(self) -> str:
        return self.artifact.meta["fingerprint"]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def size(self) -> int:
        return int(self.images.shape[-1])

    def indices(self, split: int) -> torch.Tensor:
        """Indices of the images in ``split`` (0 train, 1 test)."""
        return torch.nonzero(self.split == split).flatten()

    def normalized(self, idx: torch.Tensor, device: torch.device = torch.device("cpu")) -> torch.Tensor:
        """Images ``idx`` as float32 in the normalised space of the training split
        (per-channel standardised, then ZCA-whitened when the dataset asks for it)."""
        mean = torch.tensor(self.mean, device=device, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=device, dtype=torch.float32).view(1, 3, 1, 1)
        x = (self.images[idx].to(device).float().div_(255.0) - mean) / std
        return self.zca.apply(x) if self.zca is not None else x

    def real_pool_images(
        self, idx: torch.Tensor, device: torch.device, own: torch.Tensor | None = None
    ) -> torch.Tensor | Rows:
        """Images ``idx`` normalised, for drawing batches from: kept as uint8 and
        normalised per batch (no float copy of the selection; on the CPU no copy at
        all), except under ZCA, whose whitening is computed once.

        ``own`` (a mask over ``idx``): only those rows are read, moved and whitened (a torchrun rank's
        classes); indexing another row raises an index error instead of returning other data."""
        if own is not None and bool(own.all()):
            own = None
        if own is None:
            if self.zca is not None:
                return self.normalized(idx, device).contiguous(memory_format=torch.channels_last)
            if device.type == "cpu":
                return NormalizedRows(self.images, idx, self.mean, self.std)
            return NormalizedRows(self.images[idx].to(device), torch.arange(len(idx)), self.mean, self.std)
        mine = torch.nonzero(own).flatten()
        rows = torch.full((len(idx),), len(mine), dtype=torch.long)  # one past the end: not this rank's
        rows[mine] = torch.arange(len(mine))
        if self.zca is not None:
            return Rows(self.normalized(idx[mine], device).contiguous(memory_format=torch.channels_last), rows)
        if device.type == "cpu":
            return NormalizedRows(self.images, torch.where(own, idx, len(self.images)), self.mean, self.std)
        return NormalizedRows(self.images[idx[mine]].to(device), rows, self.mean, self.std)

    def displayable(self, images: torch.Tensor) -> torch.Tensor:
        """Images from the normalised space back to [0, 1] RGB for grids."""
        x = images.detach().float().cpu()
        if self.zca is not None:
            x = self.zca.invert(x)
        return denormalize(x, torch.tensor(self.mean), torch.tensor(self.std))

    @property
    def train_indices(self) -> torch.Tensor:
        return self.indices(TRAIN)

    @property
    def test_indices(self) -> torch.Tensor:
        return self.indices(TEST)


def load_dataset(art: Artifact) -> Dataset:
    """Open a dataset artifact (checksum-verified)."""
    if art.stage != "dataset":
        raise ChddlError(f"{art.path} is a '{art.stage}' artifact, not a dataset")
    t = art.tensors(mapped=("images",))  # rows are read as they are used (a rank reads its classes' only)
    info = art.info
    return Dataset(
        artifact=art,
        images=t["images"],
        labels=t["labels"],
        split=t["split"],
        domains=t.get("domains"),
        class_names=list(info["class_names"]),
        domain_names=list(info["domain_names"]) if info.get("domain_names") else None,
        mean=tuple(info["mean"]),
        std=tuple(info["std"]),
        zca=ZCA(t["zca_mean"], t["zca_matrix"], t["zca_inverse"]) if "zca_matrix" in t else None,
    )
