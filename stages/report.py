"""Stage ``report``: every artifact of a workspace as Markdown and a
self-contained HTML page (images embedded)."""

from __future__ import annotations

import base64
import html
import io
import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from stages import export, figures
from stages.artifacts import Artifact, Workspace, log, recompute_hint
from stages.condense import EXECUTION_ONLY, CondenseConfig, theta_prime_default
from stages.config import to_dict
from stages.data.dataset import load_dataset
from stages.errors import ChddlError
from stages.methods import METHODS
from stages.outputs import refuse_unsafe, write_swapped
from stages.paper import paper_figure
from stages.progress import NullProgress, Progress
from stages.visual import DOMAIN_COLOURS, grid_png

SWEEP_FIELDS = (
    "num_domains",
    "beta",
    "tau",
    "lam",
    "mask_init",
    "mask_init_mode",
    "mask_lr",
    "mask_optimizer",
    "theta_prime",
    "init",
    "schedule",
    "labeler",
    "mask_resolution",
    "mask_channels",
    "domain_lambda",
    "iterations",
)


@dataclass
class Section:
    title: str
    rows: list[list[str]] = field(default_factory=list)
    header: list[str] = field(default_factory=list)
    images: list[tuple[str, bytes]] = field(default_factory=list)
    text: str = ""
    figures: list[tuple[str, str]] = field(default_factory=list)  # (caption, SVG text)


def _fmt(m: dict | None) -> str:
    return "-" if not m or m.get("mean") is None else f"{m['mean']:.2f} ± {m['std']:.2f}"


def label_protocol(e: Artifact) -> str:
    """How an evaluation's networks were labelled: ``hard``, or ``soft`` with its teacher and temperature."""
    if e.info.get("labels") != "soft":
        return "hard"
    return f"soft ({e.info.get('teacher')}, T {e.config.get('temperature')})"


def _source(ws: Workspace, dataset: str) -> str:
    """Where a dataset came from (its file or folder), to match the paper's tables; its artifact name
    (``dataset-pacs_64-...``) when the dataset artifact is not in this workspace (results copied alone)."""
    data = ws.find(dataset)
    return str(data.info.get("source")) if data is not None else dataset


def _method(cond: Artifact) -> str:
    return f"{cond.config['base']}{'+chddl' if cond.config.get('domain_aware') else ''}"


def chddl_settings(cond: Artifact, ws: Workspace) -> str:
    """The CHDDL settings of a condensed set in one line ("-" for a base set):
    the pseudo-domain labels, then the objective's options."""
    c = cond.config
    if not c.get("domain_aware"):
        return "-"
    labels = ws.find(cond.meta.get("inputs", {}).get("labels", ""))
    lc = labels.config if labels else {}
    beta = f" beta {lc['beta']}" if lc.get("labeler", "").startswith("fft") else ""
    parts = [
        f"{lc.get('labeler', '?')} D {lc.get('num_domains', '?')}{beta}",
        f"lambda {c.get('lam')}",
        f"tau {c.get('tau')}",
        f"mask {c.get('mask_init_mode')} {c.get('mask_init')}",
        str(c.get("schedule")),
    ]
    if c.get("mask_optimizer", "sgd") != "sgd":
        parts.append(f"mask {c['mask_optimizer']} lr {c.get('mask_lr')}")
    elif c.get("mask_lr") != c.get("lr_img"):
        parts.append(f"mask lr {c.get('mask_lr')}")
    if c.get("schedule") in ("sequential", "algorithm1") and c.get("domain_lambda") is False:
        parts.append("domain steps unweighted")
    if c.get("mask_resolution") is not None or c.get("mask_channels", "per-channel") != "per-channel":
        k = c.get("mask_resolution")
        parts.append(f"masks {f'{k}x{k}' if k else 'full size'} {c.get('mask_channels', 'per-channel')}")
    if c.get("theta_prime") not in (None, theta_prime_default(str(c.get("base")))):
        parts.append(f"Theta' {c['theta_prime']}")
    shares = c.get("base") in METHODS and METHODS.get(c["base"]).shares_real_pass
    if shares and c.get("schedule") == "summed":
        parts.append("shared real draw" if c.get("share_real") else "separate real draws")
    if c.get("domain_syn_steps"):
        parts.append(f"domain steps {c['domain_syn_steps']}")
    return ", ".join(parts)


def _by_stage(arts: list[Artifact]) -> dict[str, list[Artifact]]:
    out: dict[str, list[Artifact]] = {}
    for a in arts:
        out.setdefault(a.stage, []).append(a)
    return out


def _datasets(arts: list[Artifact]) -> Section:
    s = Section("Datasets", header=["artifact", "source", "images (train / test)", "size", "classes", "true domains"])
    for a in arts:
        i = a.info
        s.rows.append(
            [
                a.name,
                str(i.get("source")),
                f"{i['num_train']} / {i['num_test']}",
                f"{a.config.get('size')} px",
                str(len(i["class_names"])),
                ", ".join(i.get("domain_names") or []) or "-",
            ]
        )
    return s


def _labels(arts: list[Artifact]) -> Section:
    s = Section("Pseudo-domain labels", header=["artifact", "labeler", "D", "beta", "sizes", "NMI", "ARI", "purity"])
    for a in arts:
        agree = a.metrics.get("agreement", {})
        s.rows.append(
            [
                a.name,
                a.config["labeler"],
                str(a.config["num_domains"]),
                str(a.config.get("beta")),
                " / ".join(map(str, a.info["counts"])),
                *(f"{agree[k]:.3f}" if k in agree else "-" for k in ("nmi", "ari", "purity")),
            ]
        )
    return s


def _condensed(arts: list[Artifact], ws: Workspace) -> Section:
    s = Section(
        "Condensed sets",
        header=[
            "artifact",
            "method",
            "IPC",
            "init",
            "iterations",
            "seed",
            "CHDDL settings",
            "s/it",
            "final L_cls",
            "final L_dom",
            "masks: max alpha / neighbours (chance)",
        ],
    )
    for a in arts:
        c, m = a.config, a.metrics
        s.rows.append(
            [
                a.name,
                _method(a).upper(),
                str(c["ipc"]),
                c["init"],
                str(c["iterations"]),
                str(c.get("seed")),
                chddl_settings(a, ws),
                f"{m['s_per_iteration']:.3g}" if m.get("s_per_iteration") is not None else "-",
                f"{m.get('final_loss_cls', 0):.4g}",
                f"{m.get('final_loss_dom', 0):.4g}" if c.get("domain_aware") else "-",
                _mask_cell(m.get("masks")),
            ]
        )
        classes = a.info.get("class_names") or [str(i) for i in range(int(c["ipc"]))]
        s.figures.append(
            (
                f"{a.name}: synthetic images, one row per class",
                figures.labelled_grid(_grid(a, ws), classes, [], f"{_method(a).upper()}, IPC {c['ipc']}"),
            )
        )
        if (a.path / "extra_domain_views.png").is_file():
            s.figures.append(
                (
                    f"{a.name}: the first images, their domain views and masks, and which domain wins each pixel",
                    _views_grid(a),
                )
            )
        s.figures.append(
            (
                f"{a.name}: loss curves",
                figures.loss_curves(a.tensor("loss_history").numpy(), bool(c.get("domain_aware")), a.name),
            )
        )
    return s


def _grid(a: Artifact, ws: Workspace) -> np.ndarray:
    """The set's image grid: its grid.png, or drawn anew from its tensors when that preview is missing."""
    if (a.path / "grid.png").is_file():
        return _png_array((a.path / "grid.png").read_bytes())
    dataset = None
    if a.info.get("normalization", {}).get("zca"):  # un-whitening needs the dataset's ZCA matrices
        found = ws.find(str(a.info.get("dataset") or ""))
        dataset = load_dataset(found) if found is not None else None
    if dataset is None and a.info.get("normalization", {}).get("zca"):
        x = a.tensor("images").float()  # still whitened: each image stretched to [0, 1] shows its layout
        low, high = x.amin(dim=(1, 2, 3), keepdim=True), x.amax(dim=(1, 2, 3), keepdim=True)
        rgb = (x - low) / (high - low).clamp(min=1e-12)
    else:
        rgb = export.displayable(a, dataset)
    return _png_array(grid_png(rgb, nrow=int(a.config["ipc"])))


def _png_array(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def _views_grid(a: Artifact) -> str:
    import safetensors.torch

    d = int(safetensors.torch.load_file(str(a.path / "extra_domain_masks.safetensors"))["alpha"].shape[1])
    image = _png_array((a.path / "extra_domain_views.png").read_bytes())
    cell = 2 * (int(a.info["image_size"]) + 1)  # grid_png: 1 px padding, 2x scale
    cols = ["image", *(f"view {i}" for i in range(d)), *(f"mask {i}" for i in range(d))]
    if round(image.shape[1] / cell) > len(cols):  # sets made before the winner map have no such column
        cols.append("winner")
    rows_shown = max(1, round(image.shape[0] / cell))
    labels = a.tensor("labels").tolist()[:rows_shown]
    names = a.info.get("class_names") or []
    legend = (
        [(f"pseudo-domain {i}", tuple(DOMAIN_COLOURS[i % len(DOMAIN_COLOURS)].tolist())) for i in range(d)]
        if "winner" in cols
        else None
    )
    rows = [names[k] if k < len(names) else str(k) for k in labels]
    return figures.labelled_grid(image, rows, cols, "", legend=legend)


def _mask_cell(masks: dict | None) -> str:
    if not masks:
        return "-"
    return f"{masks['mean_max_alpha']:.2f} / {masks['neighbour_agreement']:.2f} ({masks['chance_agreement']:.2f})"


def _evaluations(evals: list[Artifact], ws: Workspace) -> list[Section]:
    overall = Section(
        "Evaluation: top-1 % on the real test split (mean ± std over runs), ours vs the paper",
        header=["training set", "method", "IPC", "arch", "labels", "ours", "paper", "runs x epochs", "target domain"],
    )
    domain_rows: list[list[str]] = []
    domains: list[str] = []
    charts: dict[tuple[str, int], list] = {}  # (dataset, IPC) -> ConvNet points of every set and baseline
    paper_points: dict[tuple[str, int], list] = {}
    bars: dict[str, dict[str, list[tuple[float, float]]]] = {}  # dataset -> set -> per-domain (mean, std)
    set_labels = _set_labels(evals, ws)
    for e in evals:
        train = ws.find(e.info["train_set"])
        source = _source(ws, e.info["dataset"])
        method = _method(train) if train is not None and train.stage == "condensed" else e.info.get("train_kind", "")
        ipc = int(e.info.get("ipc", 0))
        for arch, m in e.metrics.items():
            paper = paper_figure(source, method, ipc, arch)
            overall.rows.append(
                [
                    e.info["train_set"],
                    method.upper(),
                    str(ipc or "all"),
                    arch,
                    label_protocol(e),
                    _fmt(m),
                    f"{paper[0]:.1f} ± {paper[1]:.1f}" if paper else "-",
                    f"{e.config['runs']} x {e.config['epochs']}",
                    e.config.get("target_domain") or "all",
                ]
            )
            if m.get("per_domain"):
                domains = list(m["per_domain"])
                domain_rows.append([e.info["train_set"], arch, *(_fmt(v) for v in m["per_domain"].values())])
            if arch != "convnet" or e.config.get("target_domain") or m.get("mean") is None:
                continue
            label = set_labels[e.name]
            charts.setdefault((e.info["dataset"], ipc), []).append(figures.Point(label, m["mean"], m["std"]))
            if paper:
                paper_points.setdefault((e.info["dataset"], ipc), []).append(figures.Point(label, *paper))
            if m.get("per_domain"):
                bars.setdefault(e.info["dataset"], {})[label] = [
                    (v["mean"], v["std"]) for v in m["per_domain"].values()
                ]
    overall.text = (
        "The paper's figures use its full protocol (PACS at 64 px, 10 runs x 1,000 epochs, 20k DM iterations); "
        "they are shown where the dataset, method, IPC and architecture match, whatever the scale of our run."
    )
    for (dataset, ipc), points in sorted(charts.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        extra = {"paper": paper_points[(dataset, ipc)]} if (dataset, ipc) in paper_points else None
        overall.figures.append(
            (
                f"{dataset}, IPC {ipc or 'all'}: ConvNet top-1 % of every set and baseline (mean ± std "
                f"over runs; the paper's full-protocol figure beside where it has one)",
                figures.point_chart(
                    sorted(points, key=lambda p: p.value), f"{dataset}, IPC {ipc or 'all'}", "top-1 %", extra=extra
                ),
            )
        )
    out = [overall]
    if domain_rows:
        per_domain = Section("Evaluation per true domain", header=["training set", "arch", *domains], rows=domain_rows)
        for dataset, sets in bars.items():
            per_domain.figures.append(
                (
                    f"{dataset}: ConvNet top-1 % per true domain (mean ± std over runs)",
                    figures.grouped_bars(domains, sets, dataset, "top-1 %"),
                )
            )
        out.append(per_domain)
    return out


def _set_labels(evals: list[Artifact], ws: Workspace) -> dict[str, str]:
    """A short name per evaluation for plots: the method and IPC, then the settings in which it differs from
    the other evaluations of that method and IPC on its dataset (seed last); baselines by their own name."""
    groups: dict[tuple, list[tuple[str, dict[str, str]]]] = {}
    names: dict[str, str] = {}
    for e in evals:
        train = ws.find(e.info["train_set"])
        if train is None or train.stage != "condensed":
            names[e.name] = str(e.info["train_set"]).removeprefix("baseline-")
            continue
        settings = _sweep_settings(e, train, ws) | {"seed": str(train.config.get("seed"))}
        key = (e.info["dataset"], _method(train), int(e.info.get("ipc", 0)))
        groups.setdefault(key, []).append((e.name, settings))
    for (_, method, ipc), members in groups.items():
        differ = [k for k in members[0][1] if len({m[1].get(k) for m in members}) > 1]
        differ = [k for k in differ if k != "seed"] + (["seed"] if "seed" in differ else [])
        for name, settings in members:
            shown = ", ".join(f"{k.removeprefix('labels.')} {settings.get(k, '-')}" for k in differ)
            names[name] = f"{method.upper()} IPC {ipc}" + (f", {shown}" if shown else "")
    return names


def eval_lr(e: Artifact, train: Artifact) -> str:
    """The evaluation's learning rate as a protocol setting: "own" when it is
    the condensed set's own (MTT's learned lr, else the protocol's 0.01), so
    sets with different learned lrs evaluated the default way still compare."""
    lr, own = e.config.get("lr"), train.info.get("eval_lr")
    if lr is None or own is None or math.isclose(float(lr), float(own), rel_tol=1e-9):
        return "own"
    return f"{float(lr):g}"


def _sweep_settings(e: Artifact, train: Artifact, ws: Workspace) -> dict[str, str]:
    """Everything that decides a ConvNet score: the condensed set's settings,
    its labels' (prefixed ``labels.``, sweepable fields unprefixed) and the
    evaluation protocol; the condensation seed is left out (seeds are pooled)."""
    # A set made before a setting existed ran with that setting's (resolved) default.
    known = {f.name for f in fields(CondenseConfig)}
    config = to_dict(CondenseConfig(**{k: v for k, v in train.config.items() if k in known}).resolved())
    out = {k: str(v) for k, v in config.items() if k not in EXECUTION_ONLY and k != "seed"}
    if train.config.get("domain_aware"):
        labels = ws.find(train.meta["inputs"].get("labels", ""))
        for k, v in (labels.config if labels else {"labeler": "?"}).items():
            out[k if k in SWEEP_FIELDS else f"labels.{k}"] = str(v)
    out |= {f"eval.{k}": str(v) for k, v in e.config.items() if k not in ("archs", "parallel")}
    out["eval.lr"] = eval_lr(e, train)
    out["eval.labels"] = label_protocol(e)
    out["dataset"] = str(e.info["dataset"])
    return out


def _value_order(value: str) -> tuple:
    try:
        return (0, float(value), value)
    except ValueError:
        return (1, 0.0, value)


def _sweeps(evals: list[Artifact], ws: Workspace) -> Section | None:
    """ConvNet accuracy against each setting of SWEEP_FIELDS that takes 2+
    values while every other condensation, label and evaluation setting is
    equal; the runs of every condensation seed are pooled per value."""
    runs_of: dict[tuple, dict[str, tuple[list[float], set[int]]]] = {}
    for e in evals:
        m = e.metrics.get("convnet")
        train = ws.find(e.info["train_set"])
        if m is None or train is None or train.stage != "condensed":
            continue
        settings = _sweep_settings(e, train, ws)
        runs = [v for v in m.get("runs", []) if v == v]
        for name in SWEEP_FIELDS:
            if name in settings:
                rest = tuple(sorted((k, v) for k, v in settings.items() if k != name))
                family = runs_of.setdefault((name, _method(train).upper(), rest), {})
                pooled, seeds = family.setdefault(settings[name], ([], set()))
                pooled.extend(runs)
                seeds.add(int(train.config.get("seed", 0)))
    rows = []
    lines: dict[str, dict[str, list[tuple[float, float, float]]]] = {}  # setting -> family -> (value, mean, std)
    for (name, method, rest), values in runs_of.items():
        if len(values) < 2:
            continue
        fixed = dict(rest)
        numeric = [
            (float(v), float(np.mean(r)), float(np.std(r)))
            for v, (r, _) in values.items()
            if _value_order(v)[0] == 0 and r
        ]
        if len(numeric) >= 2:
            family = f"{method} IPC {fixed['ipc']}" + (
                f" on {fixed['eval.target_domain']}" if fixed.get("eval.target_domain", "None") != "None" else ""
            )
            while family in lines.get(name, {}):
                family += "'"
            lines.setdefault(name, {})[family] = numeric
        cells = [
            f"{v}: {np.mean(r):.2f} ± {np.std(r):.2f} ({len(seeds)} x {len(r) // len(seeds)})"
            for v, (r, seeds) in sorted(values.items(), key=lambda kv: _value_order(kv[0]))
        ]
        label = f"{name} ({fixed['mask_optimizer']})" if name == "mask_lr" else name  # the lr means nothing without it
        rows.append(
            [
                label,
                method,
                fixed["ipc"],
                fixed.get("eval.target_domain", "None").replace("None", "all"),
                f"{fixed['eval.runs']} x {fixed['eval.epochs']}",
                ", ".join(cells),
            ]
        )
    if not rows:
        return None
    section = Section(
        "Sweeps (ConvNet accuracy by setting)",
        header=["setting", "method", "IPC", "target domain", "runs x epochs", "value: accuracy (seeds x runs)"],
        rows=sorted(rows),
        text="Each row varies one setting with every other condensation, label and "
        "evaluation setting equal; mean ± std over the runs of every condensation seed.",
    )
    for name, families in sorted(lines.items()):
        section.figures.append(
            (
                f"ConvNet top-1 % against {name} (mean ± std over runs)",
                figures.sweep_lines(name, families, f"sweep: {name}"),
            )
        )
    return section


# Evaluation settings (besides the lr, see eval_lr) that must agree for two evaluations to be compared.
EVAL_PROTOCOL = ("dsa", "dsa_strategy", "momentum", "weight_decay", "batch_size")
# Condensation settings that must agree for a base set and a +CHDDL set to be compared.
PAIRED_FIELDS = (
    "base",
    "ipc",
    "init",
    "iterations",
    "lr_img",
    "batch_real",
    "arch",
    "dsa",
    "domains",
    "exclude_domain",
)


def chddl_delta(base_runs: list[float], chddl_runs: list[float]) -> tuple[float, float]:
    """CHDDL mean minus base mean over all runs of all condensation seeds, and
    its standard error (Welch: sample variances over runs)."""
    a, b = np.asarray(chddl_runs, dtype=float), np.asarray(base_runs, dtype=float)
    se = float(np.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))) if len(a) > 1 and len(b) > 1 else float("nan")
    return float(a.mean() - b.mean()), se


def _over_random(evals: list[Artifact], ws: Workspace) -> Section | None:
    """Each condensed set beside random real images of the same IPC under the
    same protocol (labels hard or soft with the same teacher, same runs,
    epochs and augmentation): soft labels lift random images too, so a score
    means something only against its own protocol's baseline (DD-Ranking's
    improvement over random, IOR)."""

    def protocol(e: Artifact, arch: str) -> tuple:
        return (
            e.info["dataset"],
            int(e.info.get("ipc", 0)),
            arch,
            label_protocol(e),
            e.config.get("epochs"),
            e.config.get("target_domain"),
            *(e.config.get(k) for k in EVAL_PROTOCOL),
        )

    random: dict[tuple, list[float]] = {}
    for e in evals:
        if e.info.get("train_kind") == "random":
            for arch, m in e.metrics.items():
                random.setdefault(protocol(e, arch), []).extend(v for v in m.get("runs", []) if v == v)
    rows = []
    for e in evals:
        train = ws.find(e.info["train_set"])
        if train is None or train.stage != "condensed":
            continue
        for arch, m in e.metrics.items():
            base = random.get(protocol(e, arch))
            if not base or m.get("mean") is None:
                continue
            rows.append(
                [
                    e.info["train_set"],
                    _method(train).upper(),
                    str(e.info.get("ipc")),
                    arch,
                    label_protocol(e),
                    _fmt(m),
                    f"{np.mean(base):.2f} ± {np.std(base):.2f} ({len(base)} runs)",
                    f"{m['mean'] - float(np.mean(base)):+.2f}",
                ]
            )
    if not rows:
        return None
    return Section(
        "Gain over random real images of the same protocol",
        header=["training set", "method", "IPC", "arch", "labels", "set", "random real", "gain"],
        rows=rows,
        text="Random real: every random-baseline evaluation of this IPC under the same labels (hard, or soft from the "
        "same teacher and temperature), runs, epochs and augmentation, pooled over their seeds. Soft labels raise "
        "random images too; compare each set with its own row's baseline, not across protocols.",
    )


def _comparisons(evals: list[Artifact], ws: Workspace) -> Section | None:
    """Base vs base+CHDDL under otherwise identical condensation settings and
    evaluation protocol, pooled over condensation seeds (one evaluation per
    condensed set and protocol: the one with most runs)."""
    best: dict[tuple, tuple[int, list[float], str, int]] = {}
    for e in evals:
        train = ws.find(e.info["train_set"])
        if train is None or train.stage != "condensed":
            continue
        c = train.config
        for arch, m in e.metrics.items():
            runs = [v for v in m.get("runs", []) if v == v]
            protocol = (eval_lr(e, train), *(e.config.get(k) for k in EVAL_PROTOCOL), label_protocol(e))
            group = (
                e.info["dataset"],
                *(str(c.get(k)) for k in PAIRED_FIELDS),
                protocol,
                arch,
                e.config["epochs"],
                e.config.get("target_domain"),
            )
            slot = (group, train.name)
            if runs and len(runs) > len(best.get(slot, (0, []))[1]):
                best[slot] = (len(runs), runs, chddl_settings(train, ws), int(c.get("seed", 0)))
    # group -> CHDDL settings ("-" for the base) -> (runs of every seed, seeds)
    pooled: dict[tuple, dict[str, tuple[list[float], set[int]]]] = {}
    for (group, _), (_, runs, settings, seed) in best.items():
        runs_of, seeds = pooled.setdefault(group, {}).setdefault(settings, ([], set()))
        runs_of.extend(runs)
        seeds.add(seed)
    rows, points, paper, labels = [], [], [], []
    for group, sides in pooled.items():
        if "-" not in sides:
            continue
        b, bs = sides["-"]
        for settings, (a, as_) in sides.items():
            if settings == "-":
                continue
            delta, se = chddl_delta(b, a)
            dataset, base, ipc, init, protocol = group[0], group[1], group[2], group[3], group[-4]
            evaluation = (
                f"{group[-2]} epoch{'' if group[-2] == 1 else 's'}"
                + ("" if protocol[0] == "own" else f", lr {protocol[0]}")
                + ("" if protocol[1] else ", no DSA")
            )
            rows.append(
                [
                    dataset,
                    base.upper(),
                    ipc,
                    init,
                    group[-3],
                    evaluation,
                    f"{np.mean(b):.2f} ± {np.std(b):.2f} ({len(bs)} x {len(b) // len(bs)})",
                    settings,
                    f"{np.mean(a):.2f} ± {np.std(a):.2f} ({len(as_)} x {len(a) // len(as_)})",
                    f"{delta:+.2f} ± {se:.2f}",
                    group[-1] or "all",
                ]
            )
            label = (
                f"{dataset.split('-')[1] if '-' in dataset else dataset} {base.upper()} IPC {ipc} {init} it {group[4]}"
                f"{'' if not group[-1] else f' on {group[-1]}'} | {{}} ({len(as_)}+{len(bs)} seeds)"
            )
            labels.append((label, settings))
            points.append(figures.Point(str(len(labels) - 1), delta, 0.0 if se != se else se))
            paper_base = paper_figure(_source(ws, dataset), base, int(ipc), group[-3])
            paper_aware = paper_figure(_source(ws, dataset), f"{base}+chddl", int(ipc), group[-3])
            if paper_base and paper_aware and not group[-1]:
                paper.append(
                    figures.Point(
                        str(len(labels) - 1),
                        paper_aware[0] - paper_base[0],
                        float(np.hypot(paper_aware[1], paper_base[1])),
                    )
                )
    if not rows:
        return None
    # plot labels name only the CHDDL settings in which the compared sets differ
    common = set.intersection(*(set(st.split(", ")) for _, st in labels))
    named = [
        t.format(", ".join(p for p in st.split(", ") if p not in common) or "the shared settings") for t, st in labels
    ]
    for p in points + paper:  # labelled by row number until now
        p.label = named[int(p.label)]
    section = Section(
        "CHDDL minus base (same condensation settings, pooled over condensation seeds)",
        header=[
            "dataset",
            "base",
            "IPC",
            "init",
            "arch",
            "evaluation",
            "base (seeds x runs)",
            "CHDDL settings",
            "+CHDDL (seeds x runs)",
            "delta ± s.e.",
            "target domain",
        ],
        rows=rows,
        text="mean ± std over every evaluation run of every condensation seed; the delta's standard error is "
        "Welch's over runs, so it understates the spread between condensation seeds when there are few.",
    )
    caption = "CHDDL minus base, one row per comparison: ours (delta ± s.e.)" + (
        ", and the paper's at the same dataset, method and IPC (its full protocol)"
        if paper
        else "; the paper publishes no figure for these datasets and settings"
    )
    section.figures.append((caption, forest_plot(points, paper)))
    return section


def forest_plot(points: list, paper: list) -> str:
    return figures.point_chart(
        points,
        "CHDDL minus base",
        "top-1 % (CHDDL minus base)",
        reference=0.0,
        extra={"paper": paper} if paper else None,
    )


def _costs(arts: list[Artifact]) -> Section:
    s = Section(
        "Cost of each stage",
        header=["artifact", "stage", "wall s", "peak RSS GB", "peak CUDA GB"],
        text="wall s includes the time of the earlier runs a stage resumed (interrupted) or continued (shorter).",
    )
    for a in arts:
        c = a.meta.get("cost", {})
        s.rows.append(
            [
                a.name,
                a.stage,
                f"{c.get('wall_s_total', c.get('wall_s', 0)):.2f}",
                f"{c.get('peak_rss_bytes', 0) / 2**30:.2f}",
                f"{c['peak_cuda_bytes'] / 2**30:.2f}" if c.get("peak_cuda_bytes") else "-",
            ]
        )
    return s


_NUMBER = re.compile(r"^[+-]?(\d[\d.,]*|\.\d+)(e[+-]?\d+)?( ± [\d.]+)?( \(.*\))?( GB| s| %)?$")


def _is_number(cell: str) -> bool:
    return cell == "-" or bool(_NUMBER.match(cell))


def _markdown(sections: list[Section], image_dir: Path) -> str:
    lines = ["# chddl report", ""]
    counter = 0
    for s in sections:
        lines += [f"## {s.title}", ""]
        if s.text:
            lines += [s.text, ""]
        if s.rows:
            numeric = [all(_is_number(row[i]) for row in s.rows) for i in range(len(s.header))]
            lines.append("| " + " | ".join(s.header) + " |")
            lines.append("|" + "".join("---:|" if n else ":---|" for n in numeric))
            lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in s.rows]
            lines.append("")
        for caption, svg in s.figures:
            counter += 1
            name = f"figure_{counter:03d}.svg"
            (image_dir / name).write_text(svg)
            lines += [f"![{caption}]({image_dir.name}/{name})", f"*{caption}*", ""]
        for caption, png in s.images:
            counter += 1
            name = f"image_{counter:03d}.png"
            (image_dir / name).write_bytes(png)
            lines += [f"![{caption}]({image_dir.name}/{name})", f"*{caption}*", ""]
    return "\n".join(lines)


def inline_svg(svg: str) -> str:
    """An SVG for embedding in HTML: no metadata block and no namespace
    declarations (HTML5 needs neither), so the page names no URL at all."""
    svg = re.sub(r"<metadata>.*?</metadata>", "", svg, flags=re.S)
    svg = re.sub(r'\s+xmlns(:\w+)?="[^"]*"', "", svg)
    return svg.replace("xlink:href=", "href=")


def _html(sections: list[Section]) -> str:
    esc = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        "<title>chddl report</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}td.num,th.num{text-align:right}"
        "img{image-rendering:pixelated;max-width:100%;border:1px solid #eee}figure{margin:1em 0}"
        "figure svg{max-width:100%;height:auto}figcaption{font-size:90%;color:#444}</style>",
        "</head>",
        "<body>",
        "<h1>chddl report</h1>",
    ]
    for s in sections:
        parts.append(f"<h2>{esc(s.title)}</h2>")
        if s.text:
            parts.append(f"<p>{esc(s.text)}</p>")
        if s.rows:
            numeric = [all(_is_number(row[i]) for row in s.rows) for i in range(len(s.header))]
            cls = [' class="num"' if n else "" for n in numeric]
            parts.append(
                "<table><thead><tr>"
                + "".join(f"<th{c}>{esc(h)}</th>" for c, h in zip(cls, s.header))
                + "</tr></thead><tbody>"
            )
            parts += ["<tr>" + "".join(f"<td{c}>{esc(v)}</td>" for c, v in zip(cls, row)) + "</tr>" for row in s.rows]
            parts.append("</tbody></table>")
        for caption, svg in s.figures:
            parts.append(f"<figure>{inline_svg(svg)}<figcaption>{esc(caption)}</figcaption></figure>")
        for caption, png in s.images:
            data = base64.b64encode(png).decode()
            parts.append(
                f'<figure><img alt="{esc(caption)}" '
                f'src="data:image/png;base64,{data}"><figcaption>{esc(caption)}</figcaption></figure>'
            )
    parts += ["</body>", "</html>"]
    return "\n".join(parts)


def _summary(stages: dict[str, list[Artifact]], ws: Workspace, forest: Section | None) -> Section:
    """What the workspace holds, the best set per dataset and IPC, and the CHDDL-minus-base evidence."""
    s = Section("Summary", header=["dataset", "IPC", "best set (ConvNet)", "top-1 %", "sets evaluated"])
    best: dict[tuple[str, int], tuple[float, float, str, int]] = {}
    for e in stages.get("evaluation", []):
        m = e.metrics.get("convnet")
        if not m or m.get("mean") is None or e.config.get("target_domain"):
            continue
        slot = (e.info["dataset"], int(e.info.get("ipc", 0)))
        count = best.get(slot, (0, 0, "", 0))[3] + 1
        if slot not in best or m["mean"] > best[slot][0]:
            best[slot] = (m["mean"], m["std"], e.info["train_set"], count)
        else:
            best[slot] = (*best[slot][:3], count)
    for (dataset, ipc), (mean, std, name, count) in sorted(best.items()):
        s.rows.append([dataset, str(ipc or "all"), name, f"{mean:.2f} ± {std:.2f}", str(count)])
    n_sets = len(stages.get("condensed", []))
    s.text = (
        f"{len(stages.get('dataset', []))} dataset(s), {len(stages.get('labels', []))} labelling(s), "
        f"{n_sets} condensed set(s), {len(stages.get('evaluation', []))} evaluation(s). "
        + (
            "Below: every CHDDL-minus-base comparison (its numbers are in the section 'CHDDL minus base')."
            if forest
            else "No base set has a CHDDL twin under the same settings yet, so there is no CHDDL-minus-base comparison."
        )
    )
    if forest is not None:  # drawn once, here at the top; the section keeps the table
        s.figures, forest.figures = forest.figures, []
    return s


#: what a report folder holds: these two pages, and the figures they show under images/
REPORT_PAGES = ("report.md", "report.html")
FIGURE_SUFFIXES = (".png", ".svg")


def is_report(folder: Path) -> bool:
    """Whether ``folder`` holds a chddl report and nothing else (so replacing it loses no other file)."""
    if not (folder / "report.html").is_file():
        return False
    for path in folder.rglob("*"):
        name = path.relative_to(folder).as_posix()
        if path.is_symlink():
            return False
        if path.is_dir():
            if name != "images":
                return False
        elif not (
            name in REPORT_PAGES
            or (name.startswith("images/") and name.count("/") == 1 and path.suffix in FIGURE_SUFFIXES)
        ):
            return False
    return True


def run(workspace: Workspace, out_dir: Path | None = None, progress: Progress = NullProgress()) -> tuple[Path, Path]:
    """Write ``report.md`` (+ its figures as SVG files) and a self-contained
    ``report.html`` (figures as inline SVG); returns their paths."""
    workspace.check_exists()
    damaged = workspace.damaged()
    broken = {path for path, _ in damaged}
    # an artifact whose meta.yaml reads but whose tensors are corrupt is listed as damaged, not drawn from
    arts = [a for a in workspace.all() if a.path not in broken]
    if not arts and not damaged:
        raise ChddlError(
            f"workspace {workspace.root} holds no artifacts yet; run `chddl demo` or `chddl label PATH` first"
        )
    stages = _by_stage(arts)
    sections: list[Section] = []
    if "dataset" in stages:
        sections.append(_datasets(stages["dataset"]))
    if "labels" in stages:
        sections.append(_labels(stages["labels"]))
    if "condensed" in stages:
        sections.append(_condensed(stages["condensed"], workspace))
    paired = None
    if "evaluation" in stages:
        sections += _evaluations(stages["evaluation"], workspace)
        over_random = _over_random(stages["evaluation"], workspace)
        if over_random is not None:
            sections.append(over_random)
        paired = _comparisons(stages["evaluation"], workspace)
        if paired is not None:
            sections.append(paired)
        sweep = _sweeps(stages["evaluation"], workspace)
        if sweep is not None:
            sections.append(sweep)
    sections.insert(0, _summary(stages, workspace, paired))
    sections.append(_costs(arts))
    if damaged:
        log.warning(
            f"the report skips {len(damaged)} damaged artifact(s), listed in its last section with the command "
            "that recomputes each"
        )
        sections.append(
            Section(
                "Skipped artifacts",
                header=["folder", "problem", "recompute with"],
                rows=[[str(path), reason.split(";")[0], recompute_hint(path.name)] for path, reason in damaged],
                text="Not in the tables above: each folder is damaged. The command that made it, run again with "
                "the same options and --force, replaces it.",
            )
        )
    if out_dir is not None:
        refuse_unsafe(Path(out_dir), example="--out report")
    out_dir = Path(out_dir) if out_dir is not None else workspace.root / "report"
    if out_dir.is_symlink() or (out_dir.exists() and not out_dir.is_dir()):
        raise ChddlError(f"{out_dir} exists and is not a folder; pass another --out")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not is_report(out_dir):
        raise ChddlError(
            f"{out_dir} holds files that are not a chddl report; a report only replaces an earlier report: pass a "
            "new or empty --out"
        )

    def write(tmp: Path) -> None:
        (tmp / "images").mkdir()
        (tmp / "report.md").write_text(_markdown(sections, tmp / "images"))
        (tmp / "report.html").write_text(_html(sections))

    # Written beside its destination and swapped in: a failure leaves the earlier report as it was.
    write_swapped(out_dir, write, "report")
    return out_dir / "report.md", out_dir / "report.html"
