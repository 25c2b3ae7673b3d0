"""Stage ``condense``: synthesise IPC images per class with a base method,
optionally domain-aware (CHDDL)."""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass, replace
from typing import Callable

import safetensors
import safetensors.torch
import torch

from stages.artifacts import Artifact, Workspace, artifact_key, stage_artifact_name
from stages.config import build, option, require, require_finite, to_dict
from stages.data.augment import DEFAULT_STRATEGY, DSA
from stages.data.dataset import Dataset
from stages.domain.aware import (
    MASK_CHANNELS,
    MASK_INITS,
    ClassObjective,
    DomainAwareObjective,
    DomainMasks,
    mask_diagnostics,
)
from stages.errors import ChddlError
from stages.label import PseudoLabels
from stages.metering import measure, resumed_cost
from stages.methods import METHODS, RealPool
from stages.methods.base import MethodContext
from stages.methods.loop import Loop, LoopSettings, iteration_generator
from stages.methods.sre2l import batch_norms
from stages.methods.trajectories import ExpertStore
from stages.models import ARCHITECTURES, create_model, embeds, list_models
from stages.progress import NullProgress, Progress
from stages.teacher import domain_statistics, load_teacher
from stages.visual import grid_png, winner_map

STAGE = "condensed"
#: the loop's state at the end (images, masks, optimiser state, history), from which a longer run continues
FINAL_STATE = "final_state.safetensors"
SCHEMA_VERSION = 1


def theta_prime_default(base: str) -> str | None:
    """The default Theta' of ``base``'s domain loss (docs/design.md 1.3); None for an unknown method."""
    return METHODS.get(base).theta_prime_default if base in METHODS else None


def _base_help() -> str:
    return "base method: " + "; ".join(f"{name}, {METHODS.get(name).summary}" for name in METHODS.names())


MASK_OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("summed", "sequential", "algorithm1")
#: default mask learning rate under adam: z moves ~0.01 per step, alpha = softmax(z / tau) with tau 0.1
ADAM_MASK_LR = 0.01
#: settings that change how fast the run goes, not what it computes
EXECUTION_ONLY = (
    "checkpoint_every",
    "first_checkpoint_minutes",
    "checkpoint_minutes",
    "log_every",
    "compile",
    "checkpoint_student",
)


@dataclass
class _Condense:
    """Condensation settings; ``None`` means "the base method's default"."""

    base: str = option("dm", _base_help())
    ipc: int = option(10, "synthetic images per class")
    domain_aware: bool = option(True, "add the CHDDL domain-aware module")
    iterations: int | None = option(None, "outer iterations [dm 20000, dc 1000, mtt 5000, sre2l 1000]")
    lam: float | None = option(None, "weight lambda of the domain loss [dm, dc 0.1; mtt 0.01; sre2l 1]")
    tau: float = option(0.1, "softmax temperature of the domain masks")
    mask_init: float = option(0.01, "initial mask value (constant) or std (normal)")
    mask_init_mode: str = option("constant", "constant (uniform alpha, the paper) or normal (random alpha)")
    mask_lr: float | None = option(None, "learning rate of the masks [sgd: same as lr_img; adam: 0.01]")
    mask_optimizer: str | None = option(
        None,
        "optimiser of the masks: sgd (the images' optimiser and momentum) or adam "
        "(step size independent of the loss scale, which differs 10^4x between dm and mtt) "
        "[dm, dc, mtt sgd; sre2l adam, as its images: with sgd its masks stay uniform]",
    )
    theta_prime: str | None = option(
        None,
        "parameters Theta' of the domain loss: own (dc: a second network; mtt: the "
        "pseudo-domain experts) or shared (the class loss's network or experts) [dm shared, "
        "dc and mtt own: docs/design.md]",
    )
    schedule: str = option(
        "summed",
        "summed: one step on L_cls + lambda L_dom; sequential: a step on L_cls, then one "
        "on lambda L_dom; algorithm1: the paper's pseudocode, one step per class on its loss, then "
        "one step per pseudo-domain on its loss (images and masks)",
    )
    domain_lambda: bool = option(
        True,
        "sequential, algorithm1: the domain steps minimise lambda L_dom (off: L_dom "
        "unweighted, as Algorithm 1 writes it; lambda then has no effect)",
    )
    mask_resolution: int | None = option(
        None,
        "masks held at K x K per domain and up-sampled bilinearly to the image "
        "(structured masks; default: full resolution, the paper)",
    )
    mask_channels: str = option(
        "per-channel", "per-channel: one mask per colour channel (the paper); shared: one mask for all three"
    )
    share_real: bool = option(
        True,
        "dm, summed schedule: one real forward pass serves both losses "
        "(class-stratified draw re-weighted per domain; augmentation siamese per class)",
    )
    init: str = option("noise", "synthetic image init: noise (Gaussian, the paper) or real (random real images)")
    arch: str = option("convnet", "network architecture used for matching: " + ", ".join(ARCHITECTURES.names()))
    lr_img: float | None = option(
        None, "learning rate of the synthetic images [dm 1.0, dc 0.1, mtt 1000, sre2l 0.25 (Adam, cosine)]"
    )
    momentum_img: float = option(0.5, "SGD momentum of images and masks")
    batch_real: int = option(256, "real images per group (class or pseudo-domain) per step")
    dsa: bool | None = option(None, "differentiable siamese augmentation while matching [dm on, dc off]")
    dsa_strategy: str = option(DEFAULT_STRATEGY, "DSA families, joined by _")
    clip_grad: float | None = option(None, "clip the images' gradient norm to this value (none by default)")
    nan_retries: int | None = option(
        None,
        "on NaN/Inf: roll back to the last good state with halved learning rates, "
        "this many times before failing [mtt 3, dm/dc 0]",
    )
    domains: tuple = option((), "protocols: condense only real images of these true domains (empty: all)")
    exclude_domain: str | None = option(None, "protocols: leave this true domain out of condensation")
    compile: str = option("auto", "torch.compile the real-image forward: auto (long runs), on, off")
    seed: int = option(0, "seed of init, networks, batches and augmentation")
    checkpoint_every: int = option(100, "iterations between checkpoints (resume point)")
    first_checkpoint_minutes: float = option(
        1.0,
        "the first checkpoint comes after this many minutes of work (so a killed run loses at most about this much)",
    )
    checkpoint_minutes: float = option(5.0, "then checkpoint whenever this many minutes passed since the last one")
    log_every: int = option(10, "iterations between progress updates and NaN checks")

    def validate(self) -> None:
        require(self.base in METHODS, f"unknown base method '{self.base}'; valid: {', '.join(METHODS.names())}")
        spec = METHODS.get(self.base)
        require(self.ipc >= 1, f"--ipc must be at least 1, got {self.ipc}")
        require(
            self.arch in ARCHITECTURES, f"unknown architecture '{self.arch}'; valid: {', '.join(ARCHITECTURES.names())}"
        )
        for name in (
            "lam",
            "tau",
            "mask_init",
            "mask_lr",
            "lr_img",
            "momentum_img",
            "clip_grad",
        ):
            value = getattr(self, name)
            if value is not None:
                require_finite(f"--{name.replace('_', '-')}", value)
        require(self.tau > 0, f"--tau must be positive, got {self.tau}")
        require(self.lam is None or self.lam >= 0, f"--lam must be >= 0, got {self.lam}")
        require(self.mask_init_mode in MASK_INITS, f"--mask-init-mode must be one of {', '.join(MASK_INITS)}")
        require(self.schedule in SCHEDULES, f"--schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule}")
        require(
            self.mask_resolution is None or self.mask_resolution >= 1,
            f"--mask-resolution must be at least 1, got {self.mask_resolution}",
        )
        require(
            self.mask_channels in MASK_CHANNELS,
            f"--mask-channels must be one of {', '.join(MASK_CHANNELS)}, got {self.mask_channels}",
        )
        require(
            self.mask_optimizer is None or self.mask_optimizer in MASK_OPTIMIZERS,
            f"--mask-optimizer must be one of {', '.join(MASK_OPTIMIZERS)}, got {self.mask_optimizer}",
        )
        require(self.mask_lr is None or self.mask_lr > 0, f"--mask-lr must be positive, got {self.mask_lr}")
        require(
            self.theta_prime in (None, "own", "shared"), f"--theta-prime must be own or shared, got {self.theta_prime}"
        )
        require(
            self.theta_prime is None or self.theta_prime in spec.theta_prime,
            f"--theta-prime {self.theta_prime} is not available for {self.base}: {spec.theta_prime_why}; use "
            f"{' or '.join(spec.theta_prime)} or leave it out",
        )
        require(self.init in ("noise", "real"), f"--init must be noise or real, got {self.init}")
        require(self.iterations is None or self.iterations >= 1, "--iterations must be at least 1")
        require(self.lr_img is None or self.lr_img > 0, "--lr-img must be positive")
        require(
            0.0 <= self.momentum_img < 1.0, f"--momentum-img must lie in [0, 1) (SGD momentum), got {self.momentum_img}"
        )
        require(self.batch_real >= 1, "batch sizes must be at least 1")
        require(self.compile in ("auto", "on", "off"), "--compile must be auto, on or off")
        require(self.checkpoint_every >= 1 and self.log_every >= 1, "checkpoint_every and log_every must be >= 1")
        for name in ("first_checkpoint_minutes", "checkpoint_minutes"):
            minutes = getattr(self, name)
            require(minutes == minutes and minutes > 0, f"{name} must be a positive number of minutes, got {minutes}")
        require(self.nan_retries is None or self.nan_retries >= 0, "--nan-retries must be >= 0")
        require(self.clip_grad is None or self.clip_grad > 0, "--clip-grad must be positive")
        if spec.validate is not None:
            spec.validate(self)
        DSA(self.dsa_strategy)

    def resolved(self):
        """A copy with every base-dependent default filled in."""
        spec = METHODS.get(self.base)
        d = spec.defaults
        lr_img = self.lr_img if self.lr_img is not None else d["lr_img"]
        lam = self.lam if self.lam is not None else d["lam"]
        mask_optimizer = self.mask_optimizer or d.get("mask_optimizer", "sgd")
        out = replace(
            self,
            iterations=self.iterations or d["iterations"],
            lr_img=lr_img,
            theta_prime=self.theta_prime or spec.theta_prime_default,
            mask_lr=self.mask_lr if self.mask_lr is not None else (lr_img if mask_optimizer == "sgd" else ADAM_MASK_LR),
            mask_optimizer=mask_optimizer,
            lam=lam,
            dsa=d["dsa"] if self.dsa is None else self.dsa,
            nan_retries=self.nan_retries if self.nan_retries is not None else d.get("nan_retries", 0),
        )
        return replace(out, **spec.resolve(out)) if spec.resolve is not None else out

    def key_fields(self) -> dict:
        out = {k: v for k, v in to_dict(self).items() if k not in EXECUTION_ONLY}
        if not self.domains:
            out.pop("domains")
        if self.exclude_domain is None:
            out.pop("exclude_domain")
        # Defaults leave the keys of sets made before these options existed.
        if self.mask_optimizer == "sgd":
            out.pop("mask_optimizer")
        if self.theta_prime in (None, theta_prime_default(self.base)):
            out.pop("theta_prime")
        for k, default in (("domain_lambda", True), ("mask_resolution", None), ("mask_channels", "per-channel")):
            if out.get(k) == default:
                out.pop(k)
        if not self.domain_aware:
            for k in (
                "lam",
                "tau",
                "mask_init",
                "mask_init_mode",
                "mask_lr",
                "mask_optimizer",
                "theta_prime",
                "schedule",
                "share_real",
                "domain_syn_steps",
                "domain_lambda",
                "mask_resolution",
                "mask_channels",
            ):
                out.pop(k, None)
        # each method's own options leave the other methods' keys; the general ones it ignores leave its own
        spec = METHODS.get(self.base)
        others = {k for name in METHODS.names() if name != self.base for k in METHODS.get(name).options}
        for k in (others - set(spec.options)) | set(spec.ignores):
            out.pop(k, None)
        return out


def _compose() -> type:
    """``CondenseConfig``: the general settings above plus every registered method's own (its
    ``options_class``), in registry order, so a method declares its settings in its module alone."""
    extra, seen = [], {f.name for f in dataclasses.fields(_Condense)}
    for name in METHODS.names():
        options = METHODS.get(name).options_class
        for f in dataclasses.fields(options) if options is not None else ():
            if f.name in seen:
                raise TypeError(f"method {name}'s option {f.name} is already a condense setting")
            seen.add(f.name)
            extra.append((f.name, f.type, dataclasses.field(default=f.default, metadata=f.metadata)))
    cls = dataclasses.make_dataclass("CondenseConfig", extra, bases=(_Condense,))
    cls.__module__, cls.__doc__ = __name__, _Condense.__doc__
    return cls


CondenseConfig = _compose()


def selected_train(dataset: Dataset, cfg: CondenseConfig) -> torch.Tensor:
    """Boolean mask over the training split of the images condensation may use.

    True domain labels serve only this selection (protocols of docs/design.md 2).
    """
    train = dataset.train_indices
    if not cfg.domains and cfg.exclude_domain is None:
        return torch.ones(len(train), dtype=torch.bool)
    if not dataset.domain_names:
        raise ChddlError("--domains/--exclude-domain need a dataset with true domain labels")
    wanted = list(cfg.domains) or list(dataset.domain_names)
    if cfg.exclude_domain is not None:
        wanted = [d for d in wanted if d != cfg.exclude_domain]
    unknown = [
        d
        for d in [*cfg.domains, *([cfg.exclude_domain] if cfg.exclude_domain else [])]
        if d not in dataset.domain_names
    ]
    if unknown:
        raise ChddlError(f"unknown domain '{unknown[0]}'; this dataset has: {', '.join(dataset.domain_names)}")
    if not wanted:
        raise ChddlError("the domain selection leaves no training images")
    ids = torch.tensor([dataset.domain_names.index(d) for d in wanted])
    return torch.isin(dataset.domains[train], ids)


def _check_inputs(dataset: Dataset, labels: PseudoLabels | None, cfg: CondenseConfig) -> None:
    if METHODS.get(cfg.base).needs_embedding and not embeds(cfg.arch):
        able = [name for name in list_models() if embeds(name)]
        raise ChddlError(
            f"--base {cfg.base} matches penultimate features, which --arch {cfg.arch} does not provide; "
            f"pick one of: {', '.join(able)}"
        )
    train = dataset.train_indices[selected_train(dataset, cfg)]
    counts = torch.bincount(dataset.labels[train], minlength=dataset.num_classes)
    smallest = int(counts.min())
    if cfg.ipc > smallest:
        raise ChddlError(
            f"--ipc {cfg.ipc} exceeds the smallest class ({dataset.class_names[int(counts.argmin())]}: {smallest} "
            "training images)"
        )
    if cfg.domain_aware:
        if labels is None:
            raise ChddlError(
                "--domain-aware needs pseudo-domain labels; run `chddl label` first or pass --no-domain-aware"
            )
        if labels.artifact.meta.get("fingerprint") != dataset.fingerprint:
            raise ChddlError(
                f"labels {labels.artifact.name} were made from another dataset than {dataset.artifact.name}; re-run "
                "chddl label on it"
            )


def _normalized(dataset: Dataset, idx: torch.Tensor, device: torch.device) -> torch.Tensor:
    return dataset.normalized(idx, device).contiguous(memory_format=torch.channels_last)


def _initial_images(dataset: Dataset, pool: RealPool, cfg: CondenseConfig, g: torch.Generator) -> torch.Tensor:
    c, size = dataset.num_classes, dataset.size
    if cfg.init == "noise":
        return torch.randn(c * cfg.ipc, 3, size, size, generator=g).to(pool.images.device)
    labels = pool.labels.cpu()
    picks = [
        torch.nonzero(labels == k).flatten()[torch.randperm(int((labels == k).sum()), generator=g)[: cfg.ipc]]
        for k in range(c)
    ]
    return pool.images[torch.cat(picks).to(pool.images.device)].clone()


def run(
    dataset: Dataset,
    labels: PseudoLabels | None,
    config: CondenseConfig,
    workspace: Workspace,
    *,
    experts: Artifact | None = None,
    teacher: Artifact | None = None,
    device: torch.device = torch.device("cpu"),
    force: bool = False,
    progress: Progress = NullProgress(),
    stop_after: int | None = None,
) -> tuple[Artifact, bool]:
    """Condense ``dataset`` into IPC images per class; returns (artifact, cache_hit).

    ``experts`` (from ``pretrain-experts``) is required for MTT, ``teacher``
    (from ``train-teacher``) for SRe2L. Interrupted
    runs resume from their last checkpoint (same key). ``stop_after`` raises
    KeyboardInterrupt after that many iterations, as an interruption would
    (for tests).
    """
    cfg = config.resolved()
    _check_inputs(dataset, labels, cfg)
    store = _expert_store(experts, dataset, labels, cfg)
    teacher_net = _teacher(teacher, dataset, cfg, device)
    inputs = (
        {"dataset": dataset.artifact.key}
        | ({"labels": labels.artifact.key} if cfg.domain_aware else {})
        | ({"experts": experts.key} if store else {})
        | ({"teacher": teacher.key} if teacher_net is not None else {})
    )
    key = artifact_key(STAGE, cfg.key_fields(), inputs, SCHEMA_VERSION)
    tag = f"{cfg.base}{'+chddl' if cfg.domain_aware else ''}-ipc{cfg.ipc}"
    if cfg.domains or cfg.exclude_domain:
        tag += "-" + "+".join(cfg.domains) + (f"-no_{cfg.exclude_domain}" if cfg.exclude_domain else "")
    name = stage_artifact_name(f"condensed-{tag}", key)
    if not force and (hit := workspace.find(name)) is not None:
        workspace.set_latest(hit)
        return hit, True
    with workspace.computing(name, force) as done:
        if done is not None:
            return done, True
        workspace.ensure_writable()
        partial = workspace.partial_dir(name)
        if force:
            shutil.rmtree(partial, ignore_errors=True)
        input_names = (
            {"dataset": dataset.artifact.name}
            | ({"labels": labels.artifact.name} if cfg.domain_aware else {})
            | ({"experts": experts.name} if store else {})
            | ({"teacher": teacher.name} if teacher_net is not None else {})
        )
        with measure() as cost:
            bn_stats: list[Artifact] = []  # the statistics artifact, once _build has asked for it

            def statistics_of(images: torch.Tensor, domains: torch.Tensor) -> list:
                selection = {"domains": list(cfg.domains), "exclude_domain": cfg.exclude_domain}
                art, stats = domain_statistics(teacher, teacher_net, labels, images, domains, selection, workspace)
                bn_stats.append(art)
                return stats

            wants_stats = teacher_net is not None and cfg.domain_aware
            base, objective, images, syn_labels, _ = _build(
                dataset, labels, cfg, device, store, teacher_net, statistics_of if wants_stats else None
            )
            loop = Loop(
                base,
                objective,
                images,
                _settings(cfg, base, _image_range(dataset, device)),
                key,
                partial,
                progress,
                f"condense {tag} ({cfg.iterations} it)",
            )
            continues = METHODS.get(cfg.base).continues
            source = continuable(workspace, cfg, input_names) if continues and not force else None
            start_from = _final_state(source) if source is not None else None
            if start_from is not None:
                progress.note(f"continuing {source.name} from its final iteration {start_from[0]}")
            start = loop.run(stop_after, start_from)
            stats = loop.stats(start)
            if start_from is not None and loop.continued_at == start_from[0]:
                stats["continued_from"] = source.name
            if cfg.domain_aware:
                stats["masks"] = mask_diagnostics(objective.masks.alpha())
            extras = _mask_extras(objective, images, dataset) if cfg.domain_aware else {}
            final_state = safetensors.torch.save({k: v.detach().cpu().contiguous() for k, v in loop.state().items()})
        mean, std = torch.tensor(dataset.mean), torch.tensor(dataset.std)
        files = {"grid.png": grid_png(dataset.displayable(images), nrow=cfg.ipc), FINAL_STATE: final_state}
        if extras:
            files["extra_domain_masks.safetensors"] = extras["blob"]
            files["extra_domain_views.png"] = extras["views_png"]
        eval_lr = base.evaluation_lr() or 0.01  # the evaluation protocol's lr, unless the method learned one
        stats |= base.run_stats()
        info = {
            "class_names": dataset.class_names,
            "ipc": cfg.ipc,
            "num_classes": dataset.num_classes,
            "image_size": dataset.size,
            "base": cfg.base,
            "domain_aware": cfg.domain_aware,
            "arch": teacher.info["arch"] if teacher_net is not None else cfg.arch,
            "dataset": dataset.artifact.name,
            "labels": labels.artifact.name if cfg.domain_aware else None,
            "experts": experts.name if store else None,
            "teacher": teacher.name if teacher_net is not None else None,
            "bn_statistics": bn_stats[0].name if bn_stats else None,
            "normalization": {"mean": list(dataset.mean), "std": list(dataset.std), "zca": dataset.zca is not None},
            "eval_lr": eval_lr,
            "device": str(device),
            "train_images_used": int(selected_train(dataset, cfg).sum()),
        }
        art = workspace.write(
            stage=STAGE,
            name=name,
            key=key,
            config=to_dict(cfg),
            inputs=input_names,
            tensors={
                "images": images.detach().cpu(),
                "labels": syn_labels.cpu(),
                "mean": mean,
                "std": std,
                "loss_history": loop.history,
            },
            seed=cfg.seed,
            fingerprint=dataset.fingerprint,
            info=info,
            metrics=stats,
            cost=cost | resumed_cost(cost, loop.earlier_s) | {"s_per_iteration": stats["s_per_iteration"]},
            files=files,
            schema_version=SCHEMA_VERSION,
        )
        shutil.rmtree(partial, ignore_errors=True)
        return art, False


def _lineage(cfg: CondenseConfig) -> dict:
    return {k: v for k, v in cfg.key_fields().items() if k != "iterations"}


def continuable(workspace: Workspace, config: CondenseConfig, inputs: dict[str, str]) -> Artifact | None:
    """The finished set in ``workspace`` that a run of ``config`` can continue:
    same inputs and settings except fewer iterations (the most such), with
    its final state saved. Each rung of an iteration ladder thus costs only
    its extra iterations and stays its own artifact."""
    cfg = config.resolved()
    mine, best = _lineage(cfg), None
    names = {f.name for f in dataclasses.fields(CondenseConfig)}
    for art in workspace.all():
        n = art.config.get("iterations")
        if (
            art.stage != STAGE
            or art.meta.get("inputs") != inputs
            or FINAL_STATE not in art.meta.get("files", [])
            or not isinstance(n, int)
            or n >= cfg.iterations
            or (best is not None and n <= best.config["iterations"])
        ):
            continue
        try:
            theirs = build(CondenseConfig, {k: v for k, v in art.config.items() if k in names}).resolved()
        except ChddlError:
            continue
        if _lineage(theirs) == mine:
            best = art
    return best


def _final_state(art: Artifact) -> tuple[int, dict[str, torch.Tensor]] | None:
    try:
        state = safetensors.torch.load_file(str(art.path / FINAL_STATE))
    except (OSError, safetensors.SafetensorError):
        return None  # damaged: start over rather than continue from garbage
    return int(art.config["iterations"]), state


def _expert_store(
    experts: Artifact | None, dataset: Dataset, labels: PseudoLabels | None, cfg: CondenseConfig
) -> ExpertStore | None:
    if METHODS.get(cfg.base).needs != "experts":
        return None
    if experts is None:
        raise ChddlError("MTT needs expert trajectories; create them with `chddl pretrain-experts` (or pass --experts)")
    if experts.meta.get("fingerprint") != dataset.fingerprint:
        raise ChddlError(f"experts {experts.name} were trained on another dataset than {dataset.artifact.name}")
    store = ExpertStore(experts)
    store.check_compatible(
        cfg.arch,
        dataset.size,
        dataset.num_classes,
        dataset.mean,
        dataset.std,
        labels.num_domains if cfg.domain_aware and cfg.theta_prime == "own" else 0,
    )
    if (
        cfg.domain_aware
        and cfg.theta_prime == "own"
        and experts.meta.get("inputs", {}).get("labels") != labels.artifact.name
    ):
        raise ChddlError(
            f"the domain experts of {experts.name} were trained on other pseudo-domain labels than "
            f"{labels.artifact.name}"
        )
    last = cfg.max_start_epoch - 1 + cfg.expert_epochs  # the latest target epoch a student may be matched to
    if last > store.epochs:
        fix = (
            f"--max-start-epoch at most {store.epochs - cfg.expert_epochs + 1}"
            if cfg.expert_epochs <= store.epochs
            else f"--expert-epochs at most {store.epochs} with --max-start-epoch 1"
        )
        raise ChddlError(
            f"--max-start-epoch {cfg.max_start_epoch} with --expert-epochs {cfg.expert_epochs} reaches epoch {last}, "
            f"beyond the {store.epochs} stored in {experts.name}; use {fix}, or train longer experts "
            f"(`chddl pretrain-experts --epochs {last}`)"
        )
    return store


def _teacher(
    teacher: Artifact | None, dataset: Dataset, cfg: CondenseConfig, device: torch.device
) -> torch.nn.Module | None:
    if METHODS.get(cfg.base).needs != "teacher":
        return None
    if teacher is None:
        raise ChddlError("SRe2L needs a teacher; train one with `chddl train-teacher` (or pass --teacher)")
    net = load_teacher(teacher, dataset, device)
    if not batch_norms(net):
        raise ChddlError(
            f"teacher {teacher.name} ({teacher.info.get('arch')}) has no batch norm, which SRe2L matches; train one "
            "with `chddl train-teacher --arch convnet_bn` (or resnet18_bn)"
        )
    return net


def _image_range(dataset: Dataset, device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The normalised values of pixels 0 and 1 per channel (None under ZCA, where no box bounds them)."""
    if dataset.zca is not None:
        return None
    mean = torch.tensor(dataset.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(dataset.std, device=device).view(1, -1, 1, 1)
    return -mean / std, (1 - mean) / std


def _settings(cfg: CondenseConfig, base, clamp: tuple[torch.Tensor, torch.Tensor] | None = None) -> LoopSettings:
    lr = {"images": cfg.lr_img, "masks": cfg.mask_lr} | {g["name"]: g["lr"] for g in base.extra_parameter_groups()}
    spec = METHODS.get(cfg.base)
    adam = (("masks",) if cfg.mask_optimizer == "adam" else ()) + (("images",) if spec.adam_images else ())
    return LoopSettings(
        iterations=cfg.iterations,
        seed=cfg.seed,
        lam=cfg.lam,
        schedule=cfg.schedule,
        domain_lambda=cfg.domain_lambda,
        momentum=cfg.momentum_img,
        lr=lr,
        adam_groups=adam,
        clip_grad=cfg.clip_grad,
        nan_retries=cfg.nan_retries,
        log_every=cfg.log_every,
        checkpoint_every=cfg.checkpoint_every,
        checkpoint_minutes=cfg.checkpoint_minutes,
        first_checkpoint_minutes=cfg.first_checkpoint_minutes,
        image_betas=spec.image_betas,
        cosine_groups=("images",) if spec.adam_images else (),
        clamp=clamp if spec.clamp_images else None,
    )


def compiles_at(base: str, iterations: int) -> bool:
    """Whether ``--compile auto`` compiles a run of ``iterations`` of ``base`` (its 15-30 s pay off)."""
    start = METHODS.get(base).compile_from
    return start is not None and iterations >= start


def _build(
    dataset: Dataset,
    labels: PseudoLabels | None,
    cfg: CondenseConfig,
    device: torch.device,
    store: ExpertStore | None = None,
    teacher: torch.nn.Module | None = None,
    statistics_of: Callable[[torch.Tensor, torch.Tensor], list] | None = None,
):
    keep = selected_train(dataset, cfg)
    train = dataset.train_indices[keep]
    pool = RealPool(_normalized(dataset, train, device), dataset.labels[train].to(device))
    # SRe2L + CHDDL's per-domain targets, from the pool's own normalised images (no second copy)
    domain_stats = statistics_of(pool.images, labels.labels[keep]) if statistics_of is not None else None
    factory = lambda: create_model(cfg.arch, dataset.num_classes, dataset.size)  # noqa: E731
    dsa = DSA(cfg.dsa_strategy) if cfg.dsa else None
    # Compiling costs 15-30 s once: worth it for DM's and DC's default lengths, not for short runs.
    compile_embed = cfg.compile == "on" or (cfg.compile == "auto" and compiles_at(cfg.base, cfg.iterations))
    base = METHODS.get(cfg.base)(
        MethodContext(
            cfg=cfg,
            net_factory=factory,
            device=device,
            dsa=dsa,
            compile_embed=compile_embed,
            store=store,
            teacher=teacher,
            domain_stats=domain_stats,
        )
    )
    g0 = iteration_generator(cfg.seed, -1)
    images = _initial_images(dataset, pool, cfg, g0).requires_grad_(True)
    syn_labels = torch.arange(dataset.num_classes, device=device).repeat_interleave(cfg.ipc)
    if cfg.domain_aware:
        if labels.labels.shape[0] != len(keep):
            raise ChddlError(
                f"labels {labels.artifact.name} do not cover this dataset's training split; re-run chddl label"
            )
        if cfg.mask_resolution is not None and cfg.mask_resolution > dataset.size:
            raise ChddlError(
                f"--mask-resolution {cfg.mask_resolution} exceeds the image size {dataset.size}; "
                f"pick at most {dataset.size}"
            )
        masks = DomainMasks(
            len(images),
            labels.num_domains,
            tuple(images.shape[1:]),
            cfg.mask_init,
            cfg.mask_init_mode,
            cfg.tau,
            g0,
            cfg.mask_resolution,
            cfg.mask_channels,
        ).to(device)
        share = cfg.share_real and cfg.schedule == "summed"
        objective = DomainAwareObjective(
            base,
            pool,
            pool.labels,
            dataset.num_classes,
            syn_labels,
            cfg.batch_real,
            labels.labels[keep],
            masks,
            share_real=share,
        )
    else:
        objective = ClassObjective(base, pool, pool.labels, dataset.num_classes, syn_labels, cfg.batch_real)
    return base, objective, images, syn_labels, train


def _mask_extras(objective: DomainAwareObjective, images: torch.Tensor, dataset: Dataset) -> dict:
    """The final masks and views, saved beside (never inside) the condensed set."""
    with torch.no_grad():
        alpha = objective.masks.alpha().cpu()
        views = objective.masks.views(images).cpu()
    std = torch.tensor(dataset.std)
    shown = views[: min(len(views), 8)]
    d = shown.shape[1]
    # per shown image: the image | its D views | its D masks | which domain wins each pixel
    panel = torch.cat(
        [
            dataset.displayable(images[: len(shown)]).unsqueeze(1),
            (shown * std.view(1, 1, 3, 1, 1)).clamp(-1, 1).add(1).div(2),
            alpha[: len(shown)],
            winner_map(alpha[: len(shown)]).unsqueeze(1),
        ],
        dim=1,
    )
    return {
        "blob": safetensors.torch.save(
            {"z": objective.masks.z.detach().cpu().contiguous(), "alpha": alpha.contiguous()}
        ),
        "views_png": grid_png(panel.flatten(0, 1), nrow=2 + 2 * d),
    }
