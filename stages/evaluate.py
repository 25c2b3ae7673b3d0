"""Stage ``evaluate``: train fresh networks on a condensed set (or a baseline)
and test them on the real test split, overall and per true domain."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from stages.artifacts import Artifact, Workspace, artifact_key, stage_artifact_name
from stages.config import option, require, require_finite, to_dict
from stages.data.augment import DEFAULT_STRATEGY, DSA
from stages.data.dataset import Dataset
from stages.errors import ChddlError
from stages.executor import rank_world, stage_run
from stages.metering import measure
from stages.methods.checkpoint import load_checkpoint, save_checkpoint
from stages.models import ARCHITECTURES, create_model
from stages.progress import NullProgress, Progress
from stages.teacher import load_teacher
from stages.training import SoftLabels, StoredSoftLabels, accuracy, group_accuracy, predict, train_networks

STAGE = "evaluation"
SCHEMA_VERSION = 1
BASELINES = ("random", "whole")


#: the softmax temperature of soft labels when neither the command nor the set gives one (SRe2L's)
DEFAULT_T = 4.0


@dataclass
class EvaluateConfig:
    """The evaluation protocol (DM's: train from scratch on the set only, test once at the end)."""

    archs: tuple = option(("convnet",), "architectures to train: " + ", ".join(ARCHITECTURES.names()))
    runs: int = option(10, "independent trainings per architecture (different seeds)")
    epochs: int = option(1000, "training epochs (lr x0.1 at half)")
    lr: float | None = option(None, "learning rate [the set's own: 0.01, or MTT's learned lr]")
    momentum: float = option(0.9, "SGD momentum")
    weight_decay: float = option(5e-4, "SGD weight decay")
    batch_size: int = option(256, "training batch size")
    dsa: bool = option(True, "DSA augmentation while training (per sample)")
    dsa_strategy: str = option(DEFAULT_STRATEGY, "DSA families, joined by _")
    seed: int = option(0, "seed of the first run (run r uses seed * 1000 + r)")
    target_domain: str | None = option(None, "score only the test images of this true domain")
    temperature: float | None = option(
        None,
        "with soft labels: softmax temperature of the labels and the student (loss x T^2) "
        "[the set's own (DATM: 1), else 4]",
    )
    parallel: int = option(
        1,
        "runs of one architecture trained at once with torch.func.vmap (same results up to "
        "floating-point order; 1: one at a time)",
    )

    def validate(self) -> None:
        require(self.runs >= 1, f"--runs must be at least 1, got {self.runs}")
        require(self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}")
        require(len(self.archs) >= 1, "give at least one --arch")
        for arch in self.archs:
            require(arch in ARCHITECTURES, f"unknown architecture '{arch}'; valid: {', '.join(ARCHITECTURES.names())}")
        for name in ("lr", "momentum", "weight_decay"):
            value = getattr(self, name)
            if value is not None:
                require_finite(f"--{name.replace('_', '-')}", value)
        require(self.lr is None or self.lr > 0, "--lr must be positive")
        require(self.batch_size >= 1, "--batch-size must be at least 1")
        require(self.parallel >= 1, f"--parallel must be at least 1, got {self.parallel}")
        if self.temperature is not None:
            require_finite("--temperature", self.temperature)
            require(self.temperature > 0, f"--temperature must be positive, got {self.temperature}")
        DSA(self.dsa_strategy)


@dataclass
class TrainingSet:
    """What the networks are trained on: normalised images, labels, provenance."""

    images: torch.Tensor
    labels: torch.Tensor
    lr: float
    name: str
    key: str
    kind: str  # condensed | random | whole
    ipc: int = 0  # images per class; 0 for the whole training split
    soft_labels: torch.Tensor | None = None  # (N, num_classes) logits the set carries, if any
    soft_label_temperature: float | None = None  # the temperature its method trains on them with, if it says


def carried_soft_labels(art: Artifact) -> torch.Tensor | None:
    """The soft labels a condensed set carries, as (N, num_classes) logits, or None.

    A set stores them as ``soft_labels``, or (RDED) as ``region_logits`` (N, R, num_classes), the
    teacher's logits on each of an image's R stitched regions: one region gives its logits, several
    the log of their mean class probabilities (the label of the whole image)."""
    if art.has_tensor("soft_labels"):
        return art.tensor("soft_labels").float()
    if art.has_tensor("region_logits"):
        regions = art.tensor("region_logits").float()
        if regions.shape[1] == 1:
            return regions[:, 0]
        return torch.log_softmax(regions, dim=-1).exp().mean(dim=1).log()
    return None


def from_condensed(art: Artifact, dataset: Dataset) -> TrainingSet:
    """The images of a condensed-set artifact, checked against ``dataset``."""
    if art.stage != "condensed":
        raise ChddlError(
            f"{art.path} is a '{art.stage}' artifact, not a condensed set; pass the output of chddl condense"
        )
    if art.meta.get("fingerprint") != dataset.fingerprint:
        raise ChddlError(f"condensed set {art.name} was made from another dataset than {dataset.artifact.name}")
    if art.info.get("num_classes") != dataset.num_classes:
        raise ChddlError(
            f"condensed set {art.name} has {art.info.get('num_classes')} classes but the test split has "
            f"{dataset.num_classes}"
        )
    return TrainingSet(
        art.tensor("images"),
        art.tensor("labels"),
        float(art.info.get("eval_lr", 0.01)),
        art.name,
        art.key,
        "condensed",
        int(art.info["ipc"]),
        carried_soft_labels(art),
        art.info.get("soft_label_temperature"),
    )


def baseline(dataset: Dataset, kind: str, ipc: int, seed: int) -> TrainingSet:
    """A seeded random real subset with ``ipc`` images per class, or the whole training split."""
    if kind not in BASELINES:
        raise ChddlError(f"unknown baseline '{kind}'; valid: {', '.join(BASELINES)}")
    train = dataset.train_indices
    if kind == "random":
        g = torch.Generator().manual_seed(seed)
        labels = dataset.labels[train]
        counts = torch.bincount(labels, minlength=dataset.num_classes)
        if ipc < 1 or ipc > int(counts.min()):
            raise ChddlError(
                f"--ipc {ipc} must lie in 1..{int(counts.min())} (the smallest class) for the random baseline"
            )
        train = torch.cat(
            [train[labels == c][torch.randperm(int(counts[c]), generator=g)[:ipc]] for c in range(dataset.num_classes)]
        )
    images = dataset.normalized(train)
    tag = f"random-ipc{ipc}-s{seed}" if kind == "random" else "whole"
    return TrainingSet(
        images,
        dataset.labels[train],
        0.01,
        f"baseline-{tag}",
        f"{tag}-{dataset.artifact.key}",
        kind,
        ipc if kind == "random" else 0,
    )


def _test_split(dataset: Dataset, target_domain: str | None) -> torch.Tensor:
    test = dataset.test_indices
    if target_domain is None:
        return test
    if not dataset.domain_names:
        raise ChddlError("--target-domain needs a dataset with true domain labels")
    if target_domain not in dataset.domain_names:
        raise ChddlError(
            f"unknown target domain '{target_domain}'; this dataset has: {', '.join(dataset.domain_names)}"
        )
    return test[dataset.domains[test] == dataset.domain_names.index(target_domain)]


def summarise(values: np.ndarray) -> dict:
    """Mean and population std (as the reference reports) of per-run accuracies."""
    values = values[~np.isnan(values)]
    return (
        {"mean": round(float(values.mean()), 3), "std": round(float(values.std()), 3)}
        if len(values)
        else {"mean": None, "std": None}
    )


def _combine(acc: np.ndarray, per_domain: np.ndarray, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """Merge the runs done by every torchrun rank (each fills its own cells; NaN elsewhere)."""
    out = []
    for values in (acc, per_domain):
        t = torch.from_numpy(np.nan_to_num(values, nan=0.0)).to(device)
        filled = torch.from_numpy(~np.isnan(values)).to(device, torch.float64)
        dist.all_reduce(t)
        dist.all_reduce(filled)
        out.append(torch.where(filled > 0, t / filled.clamp(min=1), torch.full_like(t, float("nan"))).cpu().numpy())
    return out[0], out[1]


def _chunks(jobs: list[tuple[int, int]], size: int) -> list[list[tuple[int, int]]]:
    """Consecutive (arch, run) jobs of one architecture, at most ``size`` per chunk."""
    out: list[list[tuple[int, int]]] = []
    for job in jobs:
        if out and out[-1][0][0] == job[0] and len(out[-1]) < size:
            out[-1].append(job)
        else:
            out.append([job])
    return out


def _finished_runs(partial: Path, key: str, acc: np.ndarray, per_domain: np.ndarray) -> int:
    """Fill ``acc`` and ``per_domain`` with the runs an interrupted evaluation
    finished (every process's checkpoint); returns how many there were."""
    for folder in sorted(partial.glob("rank*")):
        saved = load_checkpoint(folder, key)
        if (
            saved is None
            or saved[1]["accuracy"].shape != acc.shape
            or saved[1]["per_domain_accuracy"].shape != per_domain.shape
        ):
            continue
        done_acc, done_dom = saved[1]["accuracy"].numpy(), saved[1]["per_domain_accuracy"].numpy()
        done = ~np.isnan(done_acc)
        acc[done], per_domain[done] = done_acc[done], done_dom[done]
    return int((~np.isnan(acc)).sum())


def _checked_soft_labels(train_set: TrainingSet, num_classes: int) -> torch.Tensor:
    logits = train_set.soft_labels
    if logits is None or tuple(logits.shape) != (len(train_set.labels), num_classes):
        shape = None if logits is None else tuple(logits.shape)
        raise ChddlError(
            f"{train_set.name} carries soft labels of shape {shape}, not ({len(train_set.labels)}, {num_classes}); "
            "condense it again, or pass --hard-labels"
        )
    if not torch.isfinite(logits).all():
        raise ChddlError(f"{train_set.name} carries non-finite soft labels; condense it again, or pass --hard-labels")
    return logits


def run(
    train_set: TrainingSet,
    dataset: Dataset,
    config: EvaluateConfig,
    workspace: Workspace,
    *,
    teacher: Artifact | None = None,
    hard_labels: bool = False,
    device: torch.device = torch.device("cpu"),
    force: bool = False,
    progress: Progress = NullProgress(),
    stop_after: int | None = None,
) -> tuple[Artifact, bool]:
    """Evaluate ``train_set`` on ``dataset``'s test split; returns (artifact, cache_hit).

    With ``teacher`` (a ``teacher`` artifact of the same dataset) the networks
    learn the teacher's softened outputs on each augmented batch (soft
    labels, SRe2L / FKD style) instead of the hard labels. Without a teacher,
    a set that carries soft labels (``train_set.soft_labels``: RDED's region
    labels) is trained on them, unless ``hard_labels``. The artifact records
    which (``info.labels``: hard, soft (a teacher) or set), and the report
    compares each set with the random real baseline of its own protocol.

    Every finished training is checkpointed, so an interrupted evaluation
    resumes with the runs it had not finished (same key). Under torchrun the
    runs are split across processes; rank 0 writes the artifact and returns
    it, the other ranks return (None, False). ``stop_after`` raises
    KeyboardInterrupt after that many trainings, as an interruption would
    (for tests).
    """
    cfg = config
    lr = cfg.lr if cfg.lr is not None else train_set.lr
    test = _test_split(dataset, cfg.target_domain)
    if len(test) == 0:
        raise ChddlError("the test split is empty for this selection")
    missing = sorted(set(dataset.labels[test].tolist()) - set(train_set.labels.tolist()))
    if missing:
        raise ChddlError(
            f"the test split has classes the training set lacks: {', '.join(dataset.class_names[c] for c in missing)}"
        )
    if teacher is not None and hard_labels:
        raise ChddlError("--soft-labels and --hard-labels exclude each other; pass one of them")
    mode = "soft" if teacher is not None else "set" if train_set.soft_labels is not None and not hard_labels else "hard"
    soft: SoftLabels | StoredSoftLabels | None = None
    own_t = train_set.soft_label_temperature if mode == "set" else None
    temperature = cfg.temperature if cfg.temperature is not None else own_t if own_t is not None else DEFAULT_T
    if mode == "soft":
        soft = SoftLabels(load_teacher(teacher, dataset, device), temperature)
    elif mode == "set":
        soft = StoredSoftLabels(_checked_soft_labels(train_set, dataset.num_classes).to(device), temperature)
    resolved = to_dict(cfg) | {"lr": lr, "temperature": temperature}
    if mode == "hard":
        resolved.pop("temperature")  # hard labels: the keys of evaluations made before soft labels existed
    elif mode == "set":
        resolved["labels"] = "set"
    key = artifact_key(
        STAGE,
        {k: v for k, v in resolved.items() if k != "parallel"},
        {"train": train_set.key, "dataset": dataset.artifact.key} | ({"teacher": teacher.key} if teacher else {}),
        SCHEMA_VERSION,
    )
    trained_on = train_set.name.rsplit("-", 1)[0] if train_set.kind == "condensed" else train_set.name
    protocol = {"hard": "", "soft": "-soft", "set": "-setlabels"}[mode]
    name = stage_artifact_name(f"eval-{trained_on.removeprefix('condensed-')}-{'_'.join(cfg.archs)}{protocol}", key)
    with stage_run(workspace, STAGE, name, key, SCHEMA_VERSION, force=force, shared=True) as run:
        if run.hit is not None:
            return run.hit, True
        test_x = dataset.normalized(test, device)
        test_y = dataset.labels[test]
        domains = dataset.domains[test] if dataset.domains is not None else None
        num_domains = len(dataset.domain_names or [])
        x, y = train_set.images.to(device), train_set.labels.to(device)
        dsa = DSA(cfg.dsa_strategy) if cfg.dsa else None
        acc = np.full((len(cfg.archs), cfg.runs), np.nan)
        per_domain = np.full((len(cfg.archs), cfg.runs, max(num_domains, 1)), np.nan)
        rank, world = rank_world()
        partial = run.partial
        resumed = 0 if force else _finished_runs(partial, key, acc, per_domain)
        if world > 1:
            dist.barrier()  # every process has read the checkpoints before any writes to them
        if resumed:
            progress.note(f"resuming: {resumed} of {acc.size} trainings already done ({partial})")
        jobs = [(a, r) for a in range(len(cfg.archs)) for r in range(cfg.runs) if np.isnan(acc[a, r])]
        mine = [job for i, job in enumerate(jobs) if i % world == rank]
        finished = 0
        with (
            measure() as cost,
            progress.task(
                f"evaluate {train_set.name}", total=len(mine) + resumed * (world == 1), done=resumed * (world == 1)
            ) as task,
        ):
            for chunk in _chunks(mine, cfg.parallel):
                if stop_after is not None and finished >= stop_after:
                    raise KeyboardInterrupt
                arch = cfg.archs[chunk[0][0]]
                seeds = [cfg.seed * 1000 + r for _, r in chunk]
                nets = [create_model(arch, dataset.num_classes, dataset.size, seed=seed).to(device) for seed in seeds]
                train_networks(
                    nets,
                    x,
                    y,
                    epochs=cfg.epochs,
                    lr=lr,
                    momentum=cfg.momentum,
                    weight_decay=cfg.weight_decay,
                    batch_size=cfg.batch_size,
                    dsa=dsa,
                    gens=[torch.Generator().manual_seed(seed) for seed in seeds],
                    soft=soft,
                )
                for (a, r), net in zip(chunk, nets):
                    pred = predict(net, test_x)
                    acc[a, r] = accuracy(pred, test_y)
                    if domains is not None:
                        per_domain[a, r] = group_accuracy(pred, test_y, domains, num_domains).numpy()
                    task.advance(1, arch=arch, acc=acc[a, r])
                finished += len(chunk)
                save_checkpoint(
                    partial / f"rank{rank}",
                    key,
                    finished,
                    {"accuracy": torch.from_numpy(acc), "per_domain_accuracy": torch.from_numpy(per_domain)},
                )
        if world > 1:
            acc, per_domain = _combine(acc, per_domain, device)
            if rank != 0:
                return None, False
        metrics = {}
        for a, arch in enumerate(cfg.archs):
            metrics[arch] = summarise(acc[a]) | {"runs": [round(float(v), 3) for v in acc[a]]}
            if domains is not None:
                metrics[arch]["per_domain"] = {
                    d: summarise(per_domain[a, :, i]) for i, d in enumerate(dataset.domain_names)
                }
        info = {
            "train_set": train_set.name,
            "train_kind": train_set.kind,
            "ipc": train_set.ipc,
            "dataset": dataset.artifact.name,
            "num_test": int(len(test)),
            "num_train": int(len(y)),
            "domain_names": dataset.domain_names,
            "device": str(device),
            "resumed_runs": resumed,
            "labels": mode,
            "teacher": teacher.name if teacher else None,
            "teacher_test_acc": teacher.metrics.get("test_acc") if teacher else None,
        }
        art = run.write(
            config=resolved,
            inputs={"train": train_set.name, "dataset": dataset.artifact.name}
            | ({"teacher": teacher.name} if teacher else {}),
            tensors={"accuracy": torch.from_numpy(acc), "per_domain_accuracy": torch.from_numpy(per_domain)},
            seed=cfg.seed,
            fingerprint=dataset.fingerprint,
            info=info,
            metrics=metrics,
            cost=cost,
        )
        return art, False
