"""Report sections on what the workspace holds: datasets, labellings, condensed sets, costs, the summary."""

from __future__ import annotations

import io

import numpy as np

from stages import export, figures
from stages.artifacts import Artifact, Workspace
from stages.condense_config import theta_prime_default
from stages.data.dataset import load_dataset
from stages.methods import METHODS
from stages.report.page import Section
from stages.visual import DOMAIN_COLOURS, grid_png


def metric_cell(m: dict | None) -> str:
    return "-" if not m or m.get("mean") is None else f"{m['mean']:.2f} ± {m['std']:.2f}"


def label_protocol(e: Artifact) -> str:
    """How an evaluation's networks were labelled: ``hard``, ``soft`` with its teacher and temperature, or the
    set's own soft labels with their temperature."""
    if e.info.get("labels") == "set":
        return f"the set's soft labels (T {e.config.get('temperature')})"
    if e.info.get("labels") != "soft":
        return "hard"
    return f"soft ({e.info.get('teacher')}, T {e.config.get('temperature')})"


def source_name(ws: Workspace, dataset: str) -> str:
    """Where a dataset came from (its file or folder), to match the paper's tables; its artifact name
    (``dataset-pacs_64-...``) when the dataset artifact is not in this workspace (results copied alone)."""
    data = ws.find(dataset)
    return str(data.info.get("source")) if data is not None else dataset


def method_name(cond: Artifact) -> str:
    return f"{cond.config['base']}{'+chddl' if cond.config.get('domain_aware') else ''}"


def training_free(cond: Artifact) -> bool:
    """The set was made without an optimisation loop (RDED): no initialisation, iterations or loss curve."""
    base = cond.config.get("base")
    return base in METHODS.names() and METHODS.get(base).synthesizes


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
    if c.get("domain_views", "all") != "all":
        parts.append("one pseudo-domain's views per step")
    if c.get("domain_syn_steps"):
        parts.append(f"domain steps {c['domain_syn_steps']}")
    return ", ".join(parts)


def by_stage(arts: list[Artifact]) -> dict[str, list[Artifact]]:
    out: dict[str, list[Artifact]] = {}
    for a in arts:
        out.setdefault(a.stage, []).append(a)
    return out


def datasets_section(arts: list[Artifact]) -> Section:
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


def labels_section(arts: list[Artifact]) -> Section:
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


def condensed_section(arts: list[Artifact], ws: Workspace) -> Section:
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
                method_name(a).upper(),
                str(c["ipc"]),
                "-" if training_free(a) else c["init"],
                "-" if training_free(a) else str(c["iterations"]),
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
                figures.labelled_grid(_grid(a, ws), classes, [], f"{method_name(a).upper()}, IPC {c['ipc']}"),
            )
        )
        if (a.path / "extra_domain_views.png").is_file():
            s.figures.append(
                (
                    f"{a.name}: the first images, their domain views and masks, and which domain wins each pixel",
                    _views_grid(a),
                )
            )
        if not training_free(a):
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


def costs_section(arts: list[Artifact]) -> Section:
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


def summary_section(stages: dict[str, list[Artifact]], ws: Workspace, forest: Section | None) -> Section:
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
