"""Stage ``experts``: MTT expert trajectories on real data.

Class experts (Theta) train on the whole training split; for CHDDL, one set
of domain experts per pseudo-domain (Theta', the "domain models") trains
only on that pseudo-domain's images, with class labels. Each expert is one
safetensors file with flat keys ``<epoch>/<parameter>`` (epochs 0..E).

Resumable expert by expert; under ``torchrun`` the experts are split across
processes (expert i on rank i mod world size), each writing its own files,
rank 0 writing the artifact once all are done.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import safetensors.torch
import torch
import torch.distributed as dist

from stages.artifacts import Artifact, Workspace, artifact_key, stage_artifact_name
from stages.config import option, require, to_dict
from stages.data.augment import DEFAULT_STRATEGY, DSA
from stages.data.dataset import Dataset
from stages.errors import ChddlError
from stages.executor import rank_world, stage_run
from stages.label import PseudoLabels
from stages.metering import measure, resumed_cost
from stages.models import ARCHITECTURES, create_model
from stages.progress import NullProgress, Progress
from stages.training import accuracy, predict, train_network

STAGE = "experts"
SCHEMA_VERSION = 1
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class ExpertsConfig:
    """Expert training (the reference buffer.py's defaults)."""

    num_experts: int = option(100, "experts per set (class set, and each pseudo-domain set)")
    epochs: int = option(50, "training epochs per expert; a snapshot after each (epochs + 1 in all)")
    lr: float = option(0.01, "SGD learning rate of the experts")
    momentum: float = option(0.0, "SGD momentum")
    weight_decay: float = option(0.0, "SGD weight decay")
    batch_size: int = option(256, "training batch size")
    dsa: bool = option(True, "DSA augmentation while training")
    dsa_strategy: str = option(DEFAULT_STRATEGY, "DSA families, joined by _")
    arch: str = option(
        "convnet", "expert architecture (must match condensation's): " + ", ".join(ARCHITECTURES.names())
    )
    domain_experts: bool = option(True, "also train one set per pseudo-domain (needed by MTT + CHDDL)")
    dtype: str = option("float32", "storage precision of the snapshots: float32, bfloat16 or float16")
    seed: int = option(0, "seed of expert k is seed * 100003 + k (+ an offset per set)")

    def validate(self) -> None:
        require(self.num_experts >= 1, f"--num-experts must be at least 1, got {self.num_experts}")
        require(self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}")
        require(self.lr > 0, "--lr must be positive")
        require(
            self.arch in ARCHITECTURES, f"unknown architecture '{self.arch}'; valid: {', '.join(ARCHITECTURES.names())}"
        )
        require(self.dtype in DTYPES, f"--dtype must be one of {', '.join(DTYPES)}")
        DSA(self.dsa_strategy)


def expert_file(role: str, k: int) -> str:
    """File name of expert ``k`` of set ``role`` (``class`` or ``domain<d>``)."""
    return f"{role}_expert_{k:04d}.safetensors"


def _sets(labels: PseudoLabels | None, cfg: ExpertsConfig) -> list[tuple[str, int | None]]:
    out: list[tuple[str, int | None]] = [("class", None)]
    if cfg.domain_experts:
        out += [(f"domain{d}", d) for d in range(labels.num_domains)]
    return out


def _valid_file(path: Path, expected: int) -> bool:
    try:
        with safetensors.safe_open(str(path), framework="pt") as fh:
            return (fh.metadata() or {}).get("epochs") == str(expected)
    except (OSError, safetensors.SafetensorError):
        return False


def _train_one(
    dataset: Dataset,
    idx: torch.Tensor,
    test_x: torch.Tensor,
    cfg: ExpertsConfig,
    seed: int,
    path: Path,
    device: torch.device,
) -> float:
    start = time.perf_counter()
    x = dataset.normalized(idx, device)
    y = dataset.labels[idx].to(device)
    net = create_model(cfg.arch, dataset.num_classes, dataset.size, seed=seed).to(device)
    snapshots: dict[str, torch.Tensor] = {}

    def snapshot(epoch: int, _optimizer: torch.optim.Optimizer | None = None) -> None:
        for name, p in net.named_parameters():
            snapshots[f"{epoch:03d}/{name}"] = p.detach().to("cpu", DTYPES[cfg.dtype]).clone()

    snapshot(0)
    train_network(
        net,
        x,
        y,
        epochs=cfg.epochs,
        lr=cfg.lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        batch_size=cfg.batch_size,
        dsa=DSA(cfg.dsa_strategy) if cfg.dsa else None,
        g=torch.Generator().manual_seed(seed),
        decay=False,
        on_epoch=snapshot,
    )
    acc = accuracy(predict(net, test_x), dataset.labels[dataset.test_indices])
    tmp = path.with_suffix(".tmp")
    safetensors.torch.save_file(
        snapshots,
        str(tmp),
        metadata={
            "epochs": str(cfg.epochs),
            "seed": str(seed),
            "test_acc": f"{acc:.3f}",
            "train_s": f"{time.perf_counter() - start:.2f}",
        },
    )
    os.replace(tmp, path)
    return acc


def run(
    dataset: Dataset,
    labels: PseudoLabels | None,
    cfg: ExpertsConfig,
    workspace: Workspace,
    *,
    device: torch.device = torch.device("cpu"),
    force: bool = False,
    progress: Progress = NullProgress(),
) -> tuple[Artifact | None, bool]:
    """Train (or find) the expert trajectories; returns (artifact, cache_hit).

    Under torchrun every rank trains its share; only rank 0 returns the artifact.
    """
    if cfg.domain_experts and labels is None:
        raise ChddlError(
            "domain experts need pseudo-domain labels; run `chddl label` first or pass --no-domain-experts"
        )
    if labels is not None and labels.artifact.meta.get("fingerprint") != dataset.fingerprint:
        raise ChddlError(f"labels {labels.artifact.name} were made from another dataset than {dataset.artifact.name}")
    inputs = {"dataset": dataset.artifact.key} | ({"labels": labels.artifact.key} if cfg.domain_experts else {})
    key = artifact_key(STAGE, to_dict(cfg), inputs, SCHEMA_VERSION)
    name = stage_artifact_name(f"experts-{cfg.arch}-{cfg.num_experts}x{cfg.epochs}", key)
    rank, world = rank_world()
    with stage_run(workspace, STAGE, name, key, SCHEMA_VERSION, force=force, shared=True) as run:
        if run.hit is not None:
            return run.hit, True
        partial = run.partial
        partial.mkdir(parents=True, exist_ok=True)
        jobs = [(role, d, k) for role, d in _sets(labels, cfg) for k in range(cfg.num_experts)]
        # Experts an interrupted run already trained, listed before any rank starts training.
        earlier = {
            expert_file(role, k) for role, _, k in jobs if _valid_file(partial / expert_file(role, k), cfg.epochs)
        }
        if world > 1:
            dist.barrier()
        train = dataset.train_indices
        test_x = dataset.normalized(dataset.test_indices, device)
        mine = [job for i, job in enumerate(jobs) if i % world == rank]
        with (
            measure() as cost,
            progress.task(
                f"experts (rank {rank}/{world})" if world > 1 else "experts",
                total=len(mine),
                done=sum(expert_file(role, k) in earlier for role, _, k in mine),
            ) as task,
        ):
            for role, d, k in mine:
                path = partial / expert_file(role, k)
                if path.name not in earlier:
                    idx = train if d is None else train[labels.labels == d]
                    if len(idx) == 0:
                        raise ChddlError(f"pseudo-domain {d} has no training images")
                    offset = 0 if d is None else 7919 * (d + 1)
                    _train_one(dataset, idx, test_x, cfg, cfg.seed * 100003 + k + offset, path, device)
                    task.advance(1, expert=f"{role}/{k}")
        if world > 1:
            dist.barrier()
        if rank != 0:
            return None, False
        files, accs, earlier_s = {}, {}, 0.0
        for role, _, k in jobs:
            path = partial / expert_file(role, k)
            if not _valid_file(path, cfg.epochs):
                raise ChddlError(f"expert file {path} is missing or truncated after training; re-run to resume")
            files[path.name] = path
            with safetensors.safe_open(str(path), framework="pt") as fh:
                accs.setdefault(role, []).append(float(fh.metadata()["test_acc"]))
                if path.name in earlier:  # files from before train_s was recorded count as 0
                    earlier_s += float(fh.metadata().get("train_s", 0.0))
        net = create_model(cfg.arch, dataset.num_classes, dataset.size)
        info = {
            "sets": [role for role, _ in _sets(labels, cfg)],
            "num_experts": cfg.num_experts,
            "epochs": cfg.epochs,
            "arch": cfg.arch,
            "image_size": dataset.size,
            "num_classes": dataset.num_classes,
            "dtype": cfg.dtype,
            "normalization": {"mean": list(dataset.mean), "std": list(dataset.std), "zca": dataset.zca is not None},
            "parameters": {n: list(p.shape) for n, p in net.named_parameters()},
            "files": {n: {"bytes": p.stat().st_size, "blake2b": _file_hash(p)} for n, p in files.items()},
            "num_domains": labels.num_domains if cfg.domain_experts else 0,
            "world_size": world,
        }
        metrics = {role: {"mean_test_acc": round(sum(v) / len(v), 3)} for role, v in accs.items()}
        art = run.write(
            config=to_dict(cfg),
            inputs={"dataset": dataset.artifact.name}
            | ({"labels": labels.artifact.name} if cfg.domain_experts else {}),
            tensors={"test_accuracy": torch.tensor(accs["class"])},
            seed=cfg.seed,
            fingerprint=dataset.fingerprint,
            info=info,
            metrics=metrics,
            cost=cost | resumed_cost(cost, earlier_s),
            link_files=files,
        )
        return art, False


def _file_hash(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()
