"""Stage ``label``: ingest a dataset and assign pseudo-domain labels."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from stages.artifacts import Artifact, Workspace, artifact_key, stage_artifact_name
from stages.config import option, require, require_finite, to_dict
from stages.data.dataset import Dataset, Rows
from stages.domain.agreement import agreement
from stages.domain.labelers import LABELERS, OPTIONAL_SETTINGS, LabelerInput, settings_read
from stages.errors import ChddlError
from stages.executor import stage_run
from stages.metering import measure
from stages.progress import NullProgress, Progress

STAGE = "labels"
SCHEMA_VERSION = 1


@dataclass
class LabelConfig:
    """Pseudo-domain labelling of the training split."""

    labeler: str = option("fft", "how images get pseudo-domains: " + ", ".join(LABELERS.names()))
    num_domains: int = option(4, "number of pseudo-domains D")
    beta: float = option(0.1, "side of the central FFT window as a fraction of the image side, in (0, 1]")
    seed: int = option(0, "seed of K-Means, the random labeler and the log-variance network")
    kmeans_restarts: int = option(4, "K-Means restarts (the lowest inertia wins)")
    logvar_layers: int = option(2, "early ConvNet blocks used by the log-variance labelers")
    chunk_size: int = option(4096, "images per chunk (bounds memory)")

    def validate(self) -> None:
        require(self.labeler in LABELERS, f"unknown labeler '{self.labeler}'; valid: {', '.join(LABELERS.names())}")
        require(self.num_domains >= 1, f"--num-domains must be at least 1, got {self.num_domains}")
        require_finite("--beta", self.beta)
        require(0.0 < self.beta <= 1.0, f"--beta must lie in (0, 1], got {self.beta}")
        require(self.kmeans_restarts >= 1, "kmeans_restarts must be at least 1")
        require(1 <= self.logvar_layers <= 3, "logvar_layers must be 1, 2 or 3")
        require(self.chunk_size >= 1, "chunk_size must be at least 1")

    def key_fields(self) -> dict:
        """Config values that change the labels (chunking does not)."""
        out = to_dict(self)
        out.pop("chunk_size")
        for name in set(OPTIONAL_SETTINGS) - set(settings_read(self.labeler)):
            out.pop(name)
        return out


@dataclass
class PseudoLabels:
    """Pseudo-domain labels of a dataset's training split, in train-index order."""

    artifact: Artifact
    labels: torch.Tensor
    num_domains: int


def load_labels(art: Artifact, dataset: Dataset | None = None) -> PseudoLabels:
    """Open a labels artifact; with ``dataset``, refuse labels made from another dataset."""
    if art.stage != STAGE:
        raise ChddlError(f"{art.path} is a '{art.stage}' artifact, not pseudo-domain labels")
    if dataset is not None and art.meta.get("fingerprint") != dataset.fingerprint:
        raise ChddlError(
            f"labels {art.name} were made from another dataset than {dataset.artifact.name}; re-run chddl label on it"
        )
    return PseudoLabels(art, art.tensor("labels"), int(art.info["num_domains"]))


def run(
    dataset: Dataset,
    cfg: LabelConfig,
    workspace: Workspace,
    *,
    device: torch.device = torch.device("cpu"),
    force: bool = False,
    progress: Progress = NullProgress(),
) -> tuple[Artifact, bool]:
    """Label the training split of ``dataset``; returns (labels artifact, cache_hit)."""
    train = dataset.train_indices
    num_domains = (
        len(dataset.domain_names or []) if cfg.labeler == "oracle" and dataset.domains is not None else cfg.num_domains
    )
    if num_domains > len(train):
        raise ChddlError(f"--num-domains {num_domains} exceeds the {len(train)} training images; use a smaller D")
    key_cfg = cfg.key_fields() | {"num_domains": num_domains}
    key = artifact_key(STAGE, key_cfg, {"dataset": dataset.artifact.key}, SCHEMA_VERSION)
    name = stage_artifact_name(f"labels-{cfg.labeler}-D{num_domains}", key)
    with stage_run(workspace, STAGE, name, key, SCHEMA_VERSION, force=force) as run:
        if run.hit is not None:
            return run.hit, True
        true = dataset.domains[train] if dataset.domains is not None else None
        with measure() as cost:
            out = LABELERS.get(cfg.labeler)(
                LabelerInput(
                    images=Rows(dataset.images, train),
                    mean=dataset.mean,
                    std=dataset.std,
                    num_domains=num_domains,
                    beta=cfg.beta,
                    seed=cfg.seed,
                    true_domains=true,
                    kmeans_restarts=cfg.kmeans_restarts,
                    logvar_layers=cfg.logvar_layers,
                    chunk_size=cfg.chunk_size,
                    device=device,
                    progress=progress,
                )
            )
        labels = out.labels.to(torch.int64)
        class_labels = dataset.labels[train]
        counts = torch.bincount(labels, minlength=num_domains)
        per_class = torch.zeros(num_domains, dataset.num_classes, dtype=torch.int64)
        per_class.index_put_((labels, class_labels), torch.ones_like(labels), accumulate=True)
        metrics = {"agreement": agreement(labels.numpy(), true.numpy())} if true is not None else {}
        tensors = {"labels": labels, "train_indices": train, "counts": counts, "counts_per_class": per_class}
        if out.scores is not None:
            tensors["scores"] = out.scores
        info = {
            "num_domains": num_domains,
            "num_train": len(train),
            "counts": counts.tolist(),
            "class_names": dataset.class_names,
            "dataset": dataset.artifact.name,
        }
        art = run.write(
            config=to_dict(cfg) | {"num_domains": num_domains},
            inputs={"dataset": dataset.artifact.name},
            tensors=tensors,
            seed=cfg.seed,
            fingerprint=dataset.fingerprint,
            info=info,
            metrics=metrics,
            cost=cost,
        )
        return art, False
