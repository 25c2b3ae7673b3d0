"""Report sections on evaluations: accuracy tables, sweeps, gains over random real images, CHDDL minus base."""

from __future__ import annotations

import math
from dataclasses import fields

import numpy as np

from stages import figures
from stages.artifacts import Artifact, Workspace
from stages.condense_config import EXECUTION_ONLY, CondenseConfig
from stages.config import to_dict
from stages.paper import paper_figure
from stages.report.inventory import chddl_settings, label_protocol, method_name, metric_cell, source_name
from stages.report.page import Section

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


def evaluation_sections(evals: list[Artifact], ws: Workspace) -> list[Section]:
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
        source = source_name(ws, e.info["dataset"])
        method = (
            method_name(train) if train is not None and train.stage == "condensed" else e.info.get("train_kind", "")
        )
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
                    metric_cell(m),
                    f"{paper[0]:.1f} ± {paper[1]:.1f}" if paper else "-",
                    f"{e.config['runs']} x {e.config['epochs']}",
                    e.config.get("target_domain") or "all",
                ]
            )
            if m.get("per_domain"):
                domains = list(m["per_domain"])
                domain_rows.append([e.info["train_set"], arch, *(metric_cell(v) for v in m["per_domain"].values())])
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
        key = (e.info["dataset"], method_name(train), int(e.info.get("ipc", 0)))
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


def sweep_section(evals: list[Artifact], ws: Workspace) -> Section | None:
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
                family = runs_of.setdefault((name, method_name(train).upper(), rest), {})
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


def over_random_section(evals: list[Artifact], ws: Workspace) -> Section | None:
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
                    method_name(train).upper(),
                    str(e.info.get("ipc")),
                    arch,
                    label_protocol(e),
                    metric_cell(m),
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


def comparison_section(evals: list[Artifact], ws: Workspace) -> Section | None:
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
            paper_base = paper_figure(source_name(ws, dataset), base, int(ipc), group[-3])
            paper_aware = paper_figure(source_name(ws, dataset), f"{base}+chddl", int(ipc), group[-3])
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
