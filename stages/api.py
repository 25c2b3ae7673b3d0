"""The Python API: one call per stage, with the command line's behaviour.

Each call takes a workspace (a path, or a :class:`Workspace`), optional
explicit inputs (artifact directories; by default the workspace's latest of
each, found exactly as the CLI finds them), a preset name or path, and
configuration values as keyword arguments (defaults < ``default_seed``
< preset < keywords; ``default_seed`` is the CLI's global ``--seed``).
It returns a :class:`Result` with the artifact and whether it was a cache
hit. The CLI is these calls plus option parsing and rendering.

    from stages import api

    api.label("builtin:demo", workspace="runs", dataset_config={"size": 32}, num_domains=4)
    cond = api.condense(workspace="runs", base="dm", ipc=1, iterations=20, batch_real=16)
    ev = api.evaluate(workspace="runs", runs=2, epochs=50)
    print(ev.artifact.metrics["convnet"]["mean"])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from stages import condense as condense_stage
from stages import evaluate as evaluate_stage
from stages import export as export_stage
from stages import label as label_stage
from stages import pretrain_experts as experts_stage
from stages import report as report_stage
from stages import teacher as teacher_stage
from stages.artifacts import Artifact, Workspace, read_artifact
from stages.config import build, load_preset, section
from stages.data.dataset import Dataset, load_dataset
from stages.data.ingest import DatasetConfig, ingest
from stages.device import resolve_device
from stages.errors import ChddlError
from stages.inputs import is_artifact_dir, resolve, upstream
from stages.label import PseudoLabels, load_labels
from stages.methods import METHODS
from stages.progress import NullProgress, Progress

__all__ = [
    "Artifact",
    "Result",
    "Workspace",
    "condense",
    "evaluate",
    "export",
    "label",
    "open_workspace",
    "pretrain_experts",
    "report",
    "train_teacher",
]

Where = str | Path | Workspace


@dataclass
class Result:
    """What a stage call made or found: its artifact, whether it came from the
    cache, and the input artifacts it used (by role)."""

    artifact: Artifact | None  # None on a non-zero torchrun rank
    cache_hit: bool
    inputs: dict[str, Artifact] = field(default_factory=dict)
    inputs_cached: dict[str, bool] = field(default_factory=dict)  # cache hits of inputs it made (label: ingestion)


def open_workspace(where: Where, wait: bool = True, defer_index: bool = False) -> Workspace:
    """A workspace from a path (or the workspace itself)."""
    return where if isinstance(where, Workspace) else Workspace(where, wait=wait, defer_index=defer_index)


def _device(device: str | torch.device) -> torch.device:
    return device if isinstance(device, torch.device) else resolve_device(device)


def _values(preset: str | Path | None, name: str, seed: int | None, overrides: dict[str, Any]) -> list[dict]:
    return [
        {"seed": seed} if seed is not None else {},
        section(load_preset(preset, _FOLDERS.get(name)), name),
        overrides,
    ]


_FOLDERS = {
    "condense": "condense",
    "evaluate": "evaluate",
    "dataset": "datasets",
    "label": "datasets",
    "teacher": "teacher",
}


def label(
    source: str | None = None,
    *,
    workspace: Where = "chddl-runs",
    preset: str | Path | None = None,
    dataset_config: dict[str, Any] | None = None,
    device: str | torch.device = "auto",
    force: bool = False,
    default_seed: int | None = None,
    progress: Progress = NullProgress(),
    **overrides: Any,
) -> Result:
    """Ingest ``source`` (an image folder, CIFAR folder, .npz, ``builtin:demo``,
    or a dataset artifact; default the workspace's latest dataset) and label
    its training split. ``dataset_config`` holds ingestion settings (size,
    test_fraction, ...); keywords are labelling settings (labeler,
    num_domains, beta, ...)."""
    ws = open_workspace(workspace)
    preset_values = load_preset(preset, "datasets")
    dcfg = build(DatasetConfig, section(preset_values, "dataset"), dataset_config or {})
    lcfg = build(
        label_stage.LabelConfig,
        {"seed": default_seed} if default_seed is not None else {},
        section(preset_values, "label"),
        overrides,
    )
    dev = _device(device)
    ingested = {}
    if source is not None and not is_artifact_dir(source):
        data_art, ingested["dataset"] = ingest(source, dcfg, ws, force=force, progress=progress)
    else:
        data_art = resolve(ws, "dataset", source)
    art, hit = label_stage.run(load_dataset(data_art), lcfg, ws, device=dev, force=force, progress=progress)
    return Result(art, hit, {"dataset": data_art}, ingested)


def _dataset_of(ws: Workspace, explicit: str | Path | None, via: Artifact | None) -> Artifact:
    """The dataset named explicitly, else the one ``via`` was made from, else the workspace's latest."""
    if explicit is not None:
        return resolve(ws, "dataset", explicit)
    return (upstream(ws, via, "dataset", "dataset") if via is not None else None) or resolve(ws, "dataset")


def _inputs_with_labels(
    ws: Workspace, dataset: str | Path | None, labels: str | Path | None, with_labels: bool
) -> tuple[Artifact, Dataset, Artifact | None, PseudoLabels | None]:
    """The labels (when ``with_labels``) and the dataset they were made from (or the one named),
    as artifacts and loaded."""
    label_art = resolve(ws, "labels", labels) if with_labels else None
    data_art = _dataset_of(ws, dataset, label_art)
    ds = load_dataset(data_art)
    return data_art, ds, label_art, load_labels(label_art, ds) if label_art is not None else None


def pretrain_experts(
    *,
    workspace: Where = "chddl-runs",
    dataset: str | Path | None = None,
    labels: str | Path | None = None,
    preset: str | Path | None = None,
    device: str | torch.device = "auto",
    force: bool = False,
    default_seed: int | None = None,
    progress: Progress = NullProgress(),
    **overrides: Any,
) -> Result:
    """Train (or find) MTT expert trajectories: class experts and, unless
    ``domain_experts=False``, one set per pseudo-domain of ``labels``."""
    ws = open_workspace(workspace)
    cfg = build(experts_stage.ExpertsConfig, *_values(preset, "experts", default_seed, overrides))
    data_art, ds, label_art, pseudo = _inputs_with_labels(ws, dataset, labels, cfg.domain_experts)
    art, hit = experts_stage.run(ds, pseudo, cfg, ws, device=_device(device), force=force, progress=progress)
    return Result(art, hit, {"dataset": data_art} | ({"labels": label_art} if label_art else {}))


def train_teacher(
    *,
    workspace: Where = "chddl-runs",
    dataset: str | Path | None = None,
    preset: str | Path | None = None,
    device: str | torch.device = "auto",
    force: bool = False,
    default_seed: int | None = None,
    progress: Progress = NullProgress(),
    **overrides: Any,
) -> Result:
    """Train (or find) a teacher with batch norm on the dataset's training
    split (SRe2L's squeeze), for ``condense(base="sre2l")`` and soft-label
    evaluation; the dataset defaults to the workspace's latest."""
    ws = open_workspace(workspace)
    cfg = build(teacher_stage.TeacherConfig, *_values(preset, "teacher", default_seed, overrides))
    data_art = resolve(ws, "dataset", dataset)
    ds = load_dataset(data_art)
    art, hit = teacher_stage.run(ds, cfg, ws, device=_device(device), force=force, progress=progress)
    return Result(art, hit, {"dataset": data_art})


def _teacher_of(ws: Workspace, path: str | Path | None, role: str) -> Artifact:
    """The teacher at ``path`` (else the workspace's latest), with an error naming the fix otherwise."""
    if path is not None and is_artifact_dir(path):
        stage = read_artifact(Path(path)).stage
        if stage != teacher_stage.STAGE:
            raise ChddlError(
                f"{role} needs a teacher artifact, but {path} is a '{stage}' artifact; train one with "
                "`chddl train-teacher` and pass its path"
            )
    return resolve(ws, teacher_stage.STAGE, path)


def condense(
    *,
    workspace: Where = "chddl-runs",
    dataset: str | Path | None = None,
    labels: str | Path | None = None,
    experts: str | Path | None = None,
    teacher: str | Path | None = None,
    preset: str | Path | None = None,
    device: str | torch.device = "auto",
    force: bool = False,
    default_seed: int | None = None,
    progress: Progress = NullProgress(),
    **overrides: Any,
) -> Result:
    """Condense with DM, DC, MTT or SRe2L (``base=``), with CHDDL unless
    ``domain_aware=False``; the labels, their dataset, (MTT) the experts and
    (SRe2L) the teacher default to the workspace's latest."""
    ws = open_workspace(workspace)
    cfg = build(condense_stage.CondenseConfig, *_values(preset, "condense", default_seed, overrides))
    data_art, ds, label_art, pseudo = _inputs_with_labels(ws, dataset, labels, cfg.domain_aware)
    needs = METHODS.get(cfg.base).needs
    expert_art = resolve(ws, "experts", experts) if needs == "experts" and (experts or ws.latest("experts")) else None
    teacher_art = (
        _teacher_of(ws, teacher, f"--base {cfg.base}")
        if needs == "teacher" and (teacher or ws.latest(teacher_stage.STAGE))
        else None
    )
    art, hit = condense_stage.run(
        ds,
        pseudo,
        cfg,
        ws,
        experts=expert_art,
        teacher=teacher_art,
        device=_device(device),
        force=force,
        progress=progress,
    )
    used = (
        {"dataset": data_art}
        | ({"labels": label_art} if label_art else {})
        | ({"experts": expert_art} if expert_art else {})
        | ({"teacher": teacher_art} if teacher_art else {})
    )
    return Result(art, hit, used)


def evaluate(
    condensed: str | Path | None = None,
    *,
    workspace: Where = "chddl-runs",
    dataset: str | Path | None = None,
    baseline: str | None = None,
    ipc: int = 10,
    soft_labels: str | Path | None = None,
    hard_labels: bool = False,
    preset: str | Path | None = None,
    device: str | torch.device = "auto",
    force: bool = False,
    default_seed: int | None = None,
    progress: Progress = NullProgress(),
    **overrides: Any,
) -> Result:
    """Train fresh networks on a condensed set (default the workspace's
    latest) or on a baseline (``baseline="random"`` with ``ipc`` images per
    class, or ``"whole"``), and test them on the real test split. With
    ``soft_labels`` (a teacher artifact) the networks learn the teacher's
    outputs on each augmented batch instead of the hard labels; without it a
    set that carries soft labels (RDED) is trained on those, unless
    ``hard_labels``."""
    ws = open_workspace(workspace)
    cfg = build(evaluate_stage.EvaluateConfig, *_values(preset, "evaluate", default_seed, overrides))
    if baseline is not None:
        data_art = resolve(ws, "dataset", dataset)
        ds = load_dataset(data_art)
        train_set, used = evaluate_stage.baseline(ds, baseline, ipc, cfg.seed), {"dataset": data_art}
    else:
        cond = resolve(ws, "condensed", condensed)
        data_art = resolve(ws, "dataset", dataset) if dataset else upstream(ws, cond, "dataset", "dataset")
        if data_art is None:
            raise ChddlError(f"the dataset of {cond.name} is not in this workspace; pass --dataset")
        ds = load_dataset(data_art)
        train_set, used = evaluate_stage.from_condensed(cond, ds), {"dataset": data_art, "condensed": cond}
    teacher_art = _teacher_of(ws, soft_labels, "--soft-labels") if soft_labels is not None else None
    if teacher_art is not None:
        used["teacher"] = teacher_art
    art, hit = evaluate_stage.run(
        train_set,
        ds,
        cfg,
        ws,
        teacher=teacher_art,
        hard_labels=hard_labels,
        device=_device(device),
        force=force,
        progress=progress,
    )
    return Result(art, hit, used)


def report(
    *, workspace: Where = "chddl-runs", out: str | Path | None = None, progress: Progress = NullProgress()
) -> tuple[Path, Path]:
    """Write the workspace's report; returns (report.md, report.html)."""
    return report_stage.run(open_workspace(workspace), Path(out) if out is not None else None, progress)


def export(
    condensed: str | Path | None = None,
    *,
    workspace: Where = "chddl-runs",
    format: str = "imagefolder",
    out: str | Path = "export",
    dataset: str | Path | None = None,
    force: bool = False,
) -> Path:
    """Write a condensed set (default the workspace's latest) for other tools
    (``format``: imagefolder, npz, ddranking); returns the folder."""
    ws = open_workspace(workspace)
    art = resolve(ws, "condensed", condensed)
    data_art = resolve(ws, "dataset", dataset) if dataset else upstream(ws, art, "dataset", "dataset")
    return export_stage.run(
        art, Path(out), format, load_dataset(data_art) if data_art else None, force, workspace=ws.root
    )
