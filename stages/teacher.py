"""Stage ``teacher`` (SRe2L's squeeze): a network with batch norm trained on
the real training split, reused by recover (``condense --base sre2l``), by
the soft-label evaluation and, for SRe2L + CHDDL, by the per-pseudo-domain
batch-norm statistics computed from it (an artifact of their own, keyed by
the teacher and the labels they came from).

Training uses the evaluation's training code (SGD, DSA, lr x0.1 at half)
and checkpoints after every epoch: an interrupted run resumes at the next
epoch with the same result as an uninterrupted one. Under torchrun the
ranks train one teacher with DistributedDataParallel, each on its slice of
every batch; batch norm then sees each rank's slice alone, so the number of
processes is part of the artifact's key.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from stages.artifacts import Artifact, Workspace, artifact_key, stage_artifact_name
from stages.config import option, require, to_dict
from stages.data.augment import DEFAULT_STRATEGY, DSA
from stages.data.dataset import Dataset
from stages.errors import ChddlError
from stages.executor import rank_world, stage_run
from stages.label import PseudoLabels
from stages.metering import measure, resumed_cost
from stages.methods.checkpoint import load_checkpoint, save_checkpoint
from stages.methods.sre2l import batch_norms, real_statistics
from stages.models import ARCHITECTURES, create_model
from stages.progress import NullProgress, Progress
from stages.sharding import check_same_settings, record_ranks
from stages.training import accuracy, group_accuracy, predict, train_network

STAGE = "teacher"
STATS_STAGE = "bn-statistics"
SCHEMA_VERSION = 1


@dataclass
class TeacherConfig:
    """Teacher training (SRe2L's squeeze) with the evaluation's training code."""

    arch: str = option("convnet_bn", "architecture, with batch norm: convnet_bn (CPU scale) or resnet18_bn (SRe2L's)")
    epochs: int = option(30, "training epochs (lr x0.1 at half)")
    lr: float = option(0.01, "SGD learning rate")
    momentum: float = option(0.9, "SGD momentum")
    weight_decay: float = option(5e-4, "SGD weight decay")
    batch_size: int = option(256, "training batch size")
    dsa: bool = option(True, "DSA augmentation while training")
    dsa_strategy: str = option(DEFAULT_STRATEGY, "DSA families, joined by _")
    seed: int = option(0, "seed of the initialisation, batches and augmentation")

    def validate(self) -> None:
        require(
            self.arch in ARCHITECTURES, f"unknown architecture '{self.arch}'; valid: {', '.join(ARCHITECTURES.names())}"
        )
        require(self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}")
        require(self.lr > 0, f"--lr must be positive, got {self.lr}")
        require(self.batch_size >= 1, "--batch-size must be at least 1")
        DSA(self.dsa_strategy)


def _require_batch_norm(arch: str, net: nn.Module) -> None:
    if not batch_norms(net):
        raise ChddlError(
            f"architecture {arch} has no batch norm, which SRe2L's statistics need; use convnet_bn or resnet18_bn"
        )


def _state(net: nn.Module) -> dict[str, torch.Tensor]:
    return {f"model/{k}": v.detach().cpu().clone() for k, v in net.state_dict().items()}


def _optimizer_tensors(opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    sd = opt.state_dict()
    return {f"opt/{i}/{k}": v for i, s in sd["state"].items() for k, v in s.items() if torch.is_tensor(v)}


def _optimizer_state(saved: dict[str, torch.Tensor]) -> dict[int, dict]:
    state: dict[int, dict] = {}
    for key, v in saved.items():
        if key.startswith("opt/"):
            _, i, name = key.split("/", 2)
            state.setdefault(int(i), {})[name] = v
    return state


def run(
    dataset: Dataset,
    cfg: TeacherConfig,
    workspace: Workspace,
    *,
    device: torch.device = torch.device("cpu"),
    force: bool = False,
    progress: Progress = NullProgress(),
    stop_after: int | None = None,
) -> tuple[Artifact | None, bool]:
    """Train (or find) the teacher; returns (artifact, cache_hit), the artifact None on the torchrun ranks
    other than 0 after training. ``stop_after`` raises KeyboardInterrupt after that many epochs, as an
    interruption would."""
    net = create_model(cfg.arch, dataset.num_classes, dataset.size, seed=cfg.seed)
    _require_batch_norm(cfg.arch, net)
    rank, world = rank_world()
    # batch norm's statistics come from each rank's slice of a batch: K processes train another teacher
    processes = {"processes": world} if world > 1 else {}
    key = artifact_key(STAGE, to_dict(cfg) | processes, {"dataset": dataset.artifact.key}, SCHEMA_VERSION)
    name = stage_artifact_name(f"teacher-{cfg.arch}-e{cfg.epochs}", key)
    check_same_settings(key)
    with stage_run(workspace, STAGE, name, key, SCHEMA_VERSION, force=force, shared=True) as run:
        if run.hit is not None:
            return run.hit, True
        partial = run.partial
        net = net.to(device)
        g = torch.Generator().manual_seed(cfg.seed)
        train = dataset.train_indices
        x, y = dataset.normalized(train, device), dataset.labels[train].to(device)
        start, opt_state, earlier_s = 0, None, 0.0
        saved = load_checkpoint(partial, key)
        if saved is not None:
            start, tensors = saved
            net.load_state_dict(
                {k[len("model/") :]: v.to(device) for k, v in tensors.items() if k.startswith("model/")}
            )
            g.set_state(tensors["generator"])
            opt_state = _optimizer_state({k: v.to(device) for k, v in tensors.items()})
            earlier_s = float(tensors["elapsed_s"])
            progress.note(f"resuming the teacher at epoch {start} ({partial})")
        with measure() as cost, progress.task(f"teacher {cfg.arch}", total=cfg.epochs, done=start) as task:
            t0 = time.monotonic()

            def on_epoch(epoch: int, optimizer: torch.optim.Optimizer) -> None:
                state = _state(net) | _optimizer_tensors(optimizer)
                state |= {
                    "generator": g.get_state(),
                    "elapsed_s": torch.tensor(earlier_s + time.monotonic() - t0, dtype=torch.float64),
                }
                if rank == 0:  # every rank holds the same state; one writes it
                    save_checkpoint(partial, key, epoch, state)
                task.advance(1)
                if stop_after is not None and epoch - start >= stop_after and epoch < cfg.epochs:
                    raise KeyboardInterrupt

            loss = train_network(
                net,
                x,
                y,
                epochs=cfg.epochs,
                lr=cfg.lr,
                momentum=cfg.momentum,
                weight_decay=cfg.weight_decay,
                batch_size=cfg.batch_size,
                dsa=DSA(cfg.dsa_strategy) if cfg.dsa else None,
                g=g,
                on_epoch=on_epoch,
                start_epoch=start,
                optimizer_state=opt_state,
                data_parallel=True,
            )
            test = dataset.test_indices
            pred = predict(net, dataset.normalized(test, device))
            # a dataset without a test split gives no test accuracy (None), not NaN
            acc = round(accuracy(pred, dataset.labels[test]), 3) if len(test) else None
            metrics = {"test_acc": acc, "final_train_loss": round(loss, 5)}
            if len(test) and dataset.domains is not None and dataset.domain_names:
                per = group_accuracy(pred, dataset.labels[test], dataset.domains[test], len(dataset.domain_names))
                metrics["per_domain"] = {d: round(float(v), 3) for d, v in zip(dataset.domain_names, per)}
        if not record_ranks(cost):  # torchrun: rank 0 writes the artifact
            return None, False
        info = {
            "arch": cfg.arch,
            "num_classes": dataset.num_classes,
            "image_size": dataset.size,
            "class_names": dataset.class_names,
            "dataset": dataset.artifact.name,
            "normalization": {"mean": list(dataset.mean), "std": list(dataset.std), "zca": dataset.zca is not None},
            "batch_norm_layers": len(batch_norms(net)),
            "device": str(device),
            "resumed_from_epoch": start,
        }
        art = run.write(
            config=to_dict(cfg),
            inputs={"dataset": dataset.artifact.name},
            tensors=_state(net),
            seed=cfg.seed,
            fingerprint=dataset.fingerprint,
            info=info,
            metrics=metrics,
            cost=cost | resumed_cost(cost, earlier_s),
        )
        return art, False


def load_teacher(art: Artifact, dataset: Dataset, device: torch.device = torch.device("cpu")) -> nn.Module:
    """The trained teacher of ``art`` in evaluation mode, frozen, checked
    against ``dataset`` (same data, classes and image size)."""
    if art.stage != STAGE:
        raise ChddlError(
            f"{art.path} is a '{art.stage}' artifact, not a teacher; train one with `chddl train-teacher` and "
            "pass its path"
        )
    if art.meta.get("fingerprint") != dataset.fingerprint:
        raise ChddlError(
            f"teacher {art.name} was trained on another dataset than {dataset.artifact.name}; train one on it with "
            "`chddl train-teacher`"
        )
    if art.info.get("num_classes") != dataset.num_classes or art.info.get("image_size") != dataset.size:
        raise ChddlError(
            f"teacher {art.name} has {art.info.get('num_classes')} classes at {art.info.get('image_size')} px but the "
            f"dataset has {dataset.num_classes} at {dataset.size} px; train a teacher on it with `chddl train-teacher`"
        )
    net = create_model(art.info["arch"], dataset.num_classes, dataset.size)
    state = {k[len("model/") :]: v for k, v in art.tensors().items() if k.startswith("model/")}
    net.load_state_dict(state)
    net = net.to(device).eval()
    net.requires_grad_(False)
    return net


def domain_statistics(
    teacher_art: Artifact,
    teacher: nn.Module,
    labels: PseudoLabels,
    images_of: Callable[[], torch.Tensor],
    domain_of_images: torch.Tensor,
    selection: dict,
    workspace: Workspace,
) -> tuple[Artifact, list[tuple[torch.Tensor, torch.Tensor]]]:
    """The batch-norm input statistics of the real images of each pseudo-domain
    (SRe2L + CHDDL's targets), computed once and cached as an artifact keyed by
    the teacher, the labels and the image selection they came from. ``images_of()``
    gives the normalised real images (asked for only when the statistics are computed)."""
    inputs = {"teacher": teacher_art.key, "labels": labels.artifact.key}
    key = artifact_key(STATS_STAGE, selection, inputs, SCHEMA_VERSION)
    name = stage_artifact_name(f"bnstats-D{labels.num_domains}", key)
    with stage_run(workspace, STATS_STAGE, name, key, SCHEMA_VERSION) as run:
        hit = run.hit
        if hit is None:
            with measure() as cost:
                images = images_of()
                stats = real_statistics(teacher, images, domain_of_images, labels.num_domains)
            tensors = {f"layer{i}/{k}": t.cpu() for i, (m, v) in enumerate(stats) for k, t in (("mean", m), ("var", v))}
            hit = run.write(
                config=selection,
                inputs={"teacher": teacher_art.name, "labels": labels.artifact.name},
                tensors=tensors,
                seed=0,
                fingerprint=teacher_art.meta.get("fingerprint"),
                info={"layers": len(stats), "num_domains": labels.num_domains, "images": int(len(images))},
                metrics={},
                cost=cost,
            )
    t = hit.tensors()
    n = int(hit.info["layers"])
    device = next(teacher.parameters()).device
    return hit, [(t[f"layer{i}/mean"].to(device), t[f"layer{i}/var"].to(device)) for i in range(n)]
