"""Markdown tables of chddl_gain.sh's workspaces: every DM / DM+CHDDL variant
against DM under the same condensation and evaluation settings, pooled over
condensation seeds, overall and per true domain, with mask diagnostics.

    python bench/reproduce/gain_table.py /tmp/gain32 [/tmp/gain64 ...]

Per variant: mean ± std over every evaluation run of every seed; delta =
variant minus DM at the same condensation seeds, with Welch's standard
error over runs (as `chddl report`);
per-domain deltas alike; "masks" is the seeds' mean of the mean largest
alpha and of the neighbour agreement (chance in brackets).
"""

from __future__ import annotations

import sys
from collections import defaultdict

import numpy as np

from stages.artifacts import Workspace
from stages.report.inventory import chddl_settings
from stages.report.results import chddl_delta

#: condensation settings a variant must share with its DM line
PAIRED = ("ipc", "init", "iterations", "batch_real", "arch", "dsa")
#: DM's image optimiser; a set with other values is a variant of its group, named by them
OPTIMISER_DEFAULTS = {"lr_img": 1.0, "momentum_img": 0.5}


def _rows(ws: Workspace) -> list[dict]:
    out = []
    arts = ws.all()
    by_name = {a.name: a for a in arts}
    for e in arts:
        if e.stage != "evaluation" or e.config.get("target_domain") or "convnet" not in e.metrics:
            continue
        train = by_name.get(e.info["train_set"])
        if train is None or train.stage != "condensed" or train.config.get("base") != "dm":
            continue
        per_domain = e.tensor("per_domain_accuracy")[e.config["archs"].index("convnet")].numpy()
        out.append(
            {
                "dataset": e.info["dataset"],
                "group": tuple(str(train.config.get(k)) for k in PAIRED),
                "variant": _variant(train, ws),
                "seed": train.config.get("seed"),
                "runs": np.asarray(e.metrics["convnet"]["runs"], dtype=float),
                "per_domain": per_domain,
                "domains": e.info.get("domain_names") or [],
                "masks": train.metrics.get("masks"),
                "epochs": e.config["epochs"],
            }
        )
    return out


def _variant(train, ws: Workspace) -> str:
    """``DM`` or the CHDDL settings, then any image-optimiser setting other than DM's."""
    name = "DM" if not train.config.get("domain_aware") else chddl_settings(train, ws)
    for k, default in OPTIMISER_DEFAULTS.items():
        if train.config.get(k, default) != default:
            name += f", {k} {train.config[k]}"
    return name


def _short(variant: str) -> str:
    """The CHDDL settings without the parts every variant here shares."""
    drop = ("fft D 4 beta 0.1", "tau 0.1", "mask constant 0.01", "shared real draw")
    return ", ".join(p for p in variant.split(", ") if p not in drop) or variant


def _order(value: str) -> tuple:
    """Numbers in numeric order (300 before 1000), before any text."""
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)


def tables(workdirs: list[str]) -> str:
    rows = [r for w in workdirs for r in _rows(Workspace(w))]
    groups: dict[tuple, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        groups[(r["dataset"], r["group"], r["epochs"])][r["variant"]].append(r)
    lines = []
    for (dataset, group, epochs), variants in sorted(
        groups.items(), key=lambda kv: (kv[0][0], tuple(_order(v) for v in kv[0][1]), kv[0][2])
    ):
        if "DM" not in variants:
            continue
        ipc, init, iterations, batch_real = group[:4]
        domains = variants["DM"][0]["domains"]
        lines += [
            f"\n{dataset}, IPC {ipc}, init {init}, {iterations} iterations, {batch_real} real per group, "
            f"evaluation {epochs} epochs\n",
            "| set | seeds x runs | accuracy | delta vs DM | per seed | "
            + " | ".join(f"delta {d}" for d in domains)
            + " | masks: max alpha / neighbours (chance) |",
            "|---" * (6 + len(domains)) + "|",
        ]
        for variant, sets in sorted(variants.items(), key=lambda kv: (kv[0] != "DM", kv[0])):
            runs = np.concatenate([r["runs"] for r in sets])
            dom = np.concatenate([r["per_domain"] for r in sets])
            seed_set = {r["seed"] for r in sets}
            seeds = len(seed_set)
            base = [r for r in variants["DM"] if r["seed"] in seed_set]  # DM at the same condensation seeds
            if not base:
                continue
            b_runs = np.concatenate([r["runs"] for r in base])
            b_dom = np.concatenate([r["per_domain"] for r in base])
            cells = [f"{runs.mean():.2f} ± {runs.std():.2f}"]
            by_seed = sorted(sets, key=lambda r: r["seed"])
            if variant == "DM":
                cells += ["-", " / ".join(f"s{r['seed']} {r['runs'].mean():.2f}" for r in by_seed)]
                cells += [f"({b_dom[:, i].mean():.1f})" for i in range(len(domains))]
            else:
                d, se = chddl_delta(list(b_runs), list(runs))
                cells.append(f"{d:+.2f} ± {se:.2f}")
                base_of = {r["seed"]: r["runs"].mean() for r in base}
                cells.append(" / ".join(f"s{r['seed']} {r['runs'].mean() - base_of[r['seed']]:+.2f}" for r in by_seed))
                for i in range(len(domains)):
                    dd, dse = chddl_delta(list(b_dom[:, i]), list(dom[:, i]))
                    cells.append(f"{dd:+.1f} ± {dse:.1f}")
            masks = [r["masks"] for r in sets if r["masks"]]
            mask_cell = (
                "-"
                if not masks
                else (
                    f"{np.mean([m['mean_max_alpha'] for m in masks]):.2f} / "
                    f"{np.mean([m['neighbour_agreement'] for m in masks]):.2f} "
                    f"({np.mean([m['chance_agreement'] for m in masks]):.2f})"
                )
            )
            lines.append(
                f"| {_short(variant)} | {seeds} x {len(runs) // seeds} | " + " | ".join(cells) + f" | {mask_cell} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python bench/reproduce/gain_table.py WORKDIR [WORKDIR ...]")
    print(tables(sys.argv[1:]))
