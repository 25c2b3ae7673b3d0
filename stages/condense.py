"""Stage ``condense``: synthesise IPC images per class with a base method,
optionally domain-aware (CHDDL)."""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

import safetensors
import safetensors.torch
import torch

from stages.artifacts import Artifact, Workspace, artifact_key, stage_artifact_name
from stages.condense_config import CondenseConfig
from stages.config import build, to_dict
from stages.data.augment import DSA
from stages.data.dataset import Dataset
from stages.domain.aware import (
    ClassObjective,
    DomainAwareObjective,
    DomainMasks,
    mask_diagnostics,
)
from stages.errors import ChddlError
from stages.executor import rank_world, stage_run
from stages.label import PseudoLabels
from stages.metering import measure, resumed_cost
from stages.methods import METHODS, RealPool
from stages.methods.base import MethodContext
from stages.methods.loop import Loop, LoopSettings, StateLoader, iteration_generator
from stages.methods.sre2l import batch_norms
from stages.methods.trajectories import ExpertStore
from stages.models import create_model, embeds, list_models
from stages.progress import NullProgress, Progress
from stages.sharding import check_same_settings, check_shardable, class_shard, record_ranks, sum_over_ranks
from stages.teacher import domain_statistics, load_teacher
from stages.visual import grid_png, winner_map

STAGE = "condensed"
#: the loop's state at the end (images, masks, optimiser state, history), from which a longer run continues
FINAL_STATE = "final_state.safetensors"
SCHEMA_VERSION = 1


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


def _initial_images(
    dataset: Dataset, pool: RealPool, cfg: CondenseConfig, g: torch.Generator, shard: torch.Tensor | None = None
) -> torch.Tensor:
    """The starting images, class by class (IPC each). Under torchrun (``shard``: this rank's classes) each
    rank reads its classes' real images only and the ranks sum their parts (zeros elsewhere): every rank
    then holds the one-process start."""
    c, size = dataset.num_classes, dataset.size
    if cfg.init == "noise":
        return torch.randn(c * cfg.ipc, 3, size, size, generator=g).to(pool.images.device)
    labels = pool.labels.cpu()
    picks = [
        torch.nonzero(labels == k).flatten()[torch.randperm(int((labels == k).sum()), generator=g)[: cfg.ipc]]
        for k in range(c)
    ]
    if shard is None:
        return pool.images[torch.cat(picks).to(pool.images.device)].clone()
    out = torch.zeros(c * cfg.ipc, 3, size, size, device=pool.images.device)
    for k in shard.tolist():
        out[k * cfg.ipc : k * cfg.ipc + len(picks[k])] = pool.images[picks[k].to(pool.images.device)]
    return sum_over_ranks(out)


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
    check_same_settings(key)
    # under torchrun the ranks compute one artifact together (split by class); rank 0 writes it
    with stage_run(workspace, STAGE, name, key, SCHEMA_VERSION, force=force, shared=True) as run:
        if run.hit is not None:
            return run.hit, True
        partial = run.partial
        input_names = (
            {"dataset": dataset.artifact.name}
            | ({"labels": labels.artifact.name} if cfg.domain_aware else {})
            | ({"experts": experts.name} if store else {})
            | ({"teacher": teacher.name} if teacher_net is not None else {})
        )
        with measure() as cost:
            bn_stats: list[Artifact] = []  # the statistics artifact, once _build has asked for it

            def statistics_of(images_of: Callable[[], torch.Tensor], domains: torch.Tensor) -> list:
                selection = {"domains": list(cfg.domains), "exclude_domain": cfg.exclude_domain}
                art, stats = domain_statistics(teacher, teacher_net, labels, images_of, domains, selection, workspace)
                bn_stats.append(art)
                return stats

            wants_stats = teacher_net is not None and cfg.domain_aware
            base, objective, images, syn_labels, _ = _build(
                dataset, labels, cfg, device, store, teacher_net, statistics_of if wants_stats else None
            )
            check_shardable(
                cfg.base,
                base.splits_by_class,
                base.sums_statistics,
                cfg.domain_aware,
                cfg.schedule,
                dataset.num_classes,
            )
            set_tensors: dict[str, torch.Tensor] = {}
            if METHODS.get(cfg.base).synthesizes:  # training-free: no loop, nothing to resume or continue
                images, set_tensors, stats = _synthesize(base, objective.pool, dataset, cfg, progress)
                history, earlier_s, final_state, extras = torch.zeros(0, 2), 0.0, None, {}
            else:
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
                extras = _mask_extras(objective, images, dataset) if cfg.domain_aware else {}
                if extras:
                    stats["masks"] = mask_diagnostics(extras["masks"]["alpha"])
                final_state = {k: v.detach().cpu() for k, v in loop.state(copy=False).items()}
                history, earlier_s = loop.history, loop.earlier_s
                set_tensors = {k: v.detach().cpu() for k, v in base.set_tensors().items()}
        if not record_ranks(cost):  # torchrun: rank 0 writes the artifact
            return None, False
        mean, std = torch.tensor(dataset.mean), torch.tensor(dataset.std)
        files = {"grid.png": grid_png(dataset.displayable(images), nrow=cfg.ipc)}
        if final_state is not None:
            files[FINAL_STATE] = final_state
        if extras:
            files["extra_domain_masks.safetensors"] = extras["masks"]
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
        if METHODS.get(cfg.base).soft_label_temperature is not None:
            info["soft_label_temperature"] = METHODS.get(cfg.base).soft_label_temperature
        art = run.write(
            config=to_dict(cfg),
            inputs=input_names,
            tensors={
                "images": images.detach().cpu(),
                "labels": syn_labels.cpu(),
                "mean": mean,
                "std": std,
                "loss_history": history,
            }
            | set_tensors,
            seed=cfg.seed,
            fingerprint=dataset.fingerprint,
            info=info,
            metrics=stats,
            cost=cost | resumed_cost(cost, earlier_s) | {"s_per_iteration": stats["s_per_iteration"]},
            files=files,
        )
        return art, False


def _synthesize(
    base, pool: RealPool, dataset: Dataset, cfg: CondenseConfig, progress: Progress
) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict]:
    """A training-free method's set (under torchrun each rank makes its classes and the ranks sum the
    parts), its extra tensors and its metrics."""
    rank, world = rank_world()
    classes = class_shard(dataset.num_classes, rank, world) if world > 1 else torch.arange(dataset.num_classes)
    started = time.monotonic()
    with progress.task(f"condense {cfg.base}-ipc{cfg.ipc} (training-free)", total=len(classes)) as task:
        # each class's randomness is keyed by the seed and the class alone
        generator_of = lambda c: iteration_generator(cfg.seed, c)  # noqa: E731
        made = base.synthesize(pool, classes.tolist(), cfg.ipc, generator_of, lambda: task.advance(1))
    images = sum_over_ranks(made.images)
    tensors = {k: sum_over_ranks(v).cpu() for k, v in made.tensors.items()}
    stats = {
        "s_per_iteration": None,
        "iterations_run": 0,
        "synthesis_s": round(time.monotonic() - started, 3),
        "final_loss_cls": round(float(sum_over_ranks(made.loss_sum.detach().clone())) / len(images), 6),
        "final_loss_dom": 0.0,
    }
    return images, tensors, stats


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


def _final_state(art: Artifact) -> tuple[int, StateLoader] | None:
    """(iterations, a loader of the final state) of a finished run; the state is read only when the loop uses it
    (and not held by the caller through the run: at 64 px on 200 classes it is ~1 GiB)."""
    path = str(art.path / FINAL_STATE)
    try:
        with safetensors.safe_open(path, framework="pt") as fh:
            fh.keys()  # the header and the data's extent are checked on opening
    except (OSError, safetensors.SafetensorError):
        return None  # damaged: start over rather than continue from garbage
    return int(art.config["iterations"]), lambda: safetensors.torch.load_file(path)


def _expert_store(
    experts: Artifact | None, dataset: Dataset, labels: PseudoLabels | None, cfg: CondenseConfig
) -> ExpertStore | None:
    if METHODS.get(cfg.base).needs != "experts":
        return None
    if experts is None:
        raise ChddlError(
            f"--base {cfg.base} needs expert trajectories; create them with `chddl pretrain-experts` "
            "(or pass --experts)"
        )
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
        raise ChddlError(f"--base {cfg.base} needs a teacher; train one with `chddl train-teacher` (or pass --teacher)")
    net = load_teacher(teacher, dataset, device)
    if not batch_norms(net):
        raise ChddlError(
            f"teacher {teacher.name} ({teacher.info.get('arch')}) has no batch norm, which SRe2L matches and "
            "`chddl train-teacher` gives every teacher; train one with `chddl train-teacher --arch convnet_bn` "
            "(or resnet18_bn)"
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


def _one_domain_scale(cfg: CondenseConfig, num_domains: int) -> float | None:
    """With ``--domain-views one``, the factor that turns one drawn pseudo-domain's term into an unbiased
    estimate of the whole domain loss: D where the base sums its domains' terms, 1 where it averages them."""
    if cfg.domain_views != "one":
        return None
    return float(num_domains) if METHODS.get(cfg.base).domain_terms == "sum" else 1.0


def _build(
    dataset: Dataset,
    labels: PseudoLabels | None,
    cfg: CondenseConfig,
    device: torch.device,
    store: ExpertStore | None = None,
    teacher: torch.nn.Module | None = None,
    statistics_of: Callable[[Callable[[], torch.Tensor], torch.Tensor], list] | None = None,
):
    keep = selected_train(dataset, cfg)
    train = dataset.train_indices[keep]
    rank, world = rank_world()
    shard = class_shard(dataset.num_classes, rank, world) if world > 1 else None  # torchrun: this rank's classes
    # under torchrun a rank reads (and moves to its device) only its classes' real images
    own = torch.isin(dataset.labels[train], shard) if shard is not None else None
    pool = RealPool(dataset.real_pool_images(train, device, own), dataset.labels[train].to(device))
    # SRe2L + CHDDL's per-domain targets span all classes (the pool's own images when it holds them all)
    every = (lambda: pool.images) if own is None else (lambda: dataset.real_pool_images(train, device))
    domain_stats = statistics_of(every, labels.labels[keep]) if statistics_of is not None else None
    factory = lambda: create_model(cfg.arch, dataset.num_classes, dataset.size)  # noqa: E731
    dsa = DSA(cfg.dsa_strategy) if cfg.dsa else None
    # Compiling costs 15 s to 2 min once: worth it for the default lengths, not for short runs.
    compile_hot_path = cfg.compile == "on" or (cfg.compile == "auto" and compiles_at(cfg.base, cfg.iterations))
    base = METHODS.get(cfg.base)(
        MethodContext(
            cfg=cfg,
            net_factory=factory,
            device=device,
            dsa=dsa,
            compile_hot_path=compile_hot_path,
            store=store,
            teacher=teacher,
            domain_stats=domain_stats,
        )
    )
    g0 = iteration_generator(cfg.seed, -1)
    syn_labels = torch.arange(dataset.num_classes, device=device).repeat_interleave(cfg.ipc)
    images = base.initial_images(_initial_images(dataset, pool, cfg, g0, shard), pool, syn_labels, g0)
    images = images.requires_grad_(True)
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
            classes=shard,
            one_domain_scale=_one_domain_scale(cfg, labels.num_domains),
        )
    else:
        objective = ClassObjective(base, pool, pool.labels, dataset.num_classes, syn_labels, cfg.batch_real, shard)
    return base, objective, images, syn_labels, train


def _mask_extras(objective: DomainAwareObjective, images: torch.Tensor, dataset: Dataset) -> dict:
    """The final masks (z and alpha, written from their memory when the artifact is) and a picture of the first
    images' views, saved beside (never inside) the condensed set."""
    with torch.no_grad():
        alpha = objective.masks.alpha().cpu()  # shared masks: a view over the colour channels, made whole as written
        shown = objective.masks.views(images, torch.arange(min(len(images), 8), device=images.device)).cpu()
    std = torch.tensor(dataset.std)
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
        "masks": {"z": objective.masks.z.detach().cpu(), "alpha": alpha},
        "views_png": grid_png(panel.flatten(0, 1), nrow=2 + 2 * d),
    }
