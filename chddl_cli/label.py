"""``chddl label``: ingest a dataset and assign pseudo-domain labels."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from chddl_cli.common import (
    JSON_OPTION,
    artifact_json,
    cost_line,
    guarded,
    print_json,
    print_table,
    result_line,
    run_stage,
)
from chddl_cli.options import config_options
from stages import api
from stages import label as label_stage
from stages.api import Artifact, DatasetConfig


def dataset_table(art: Artifact) -> Table:
    info = art.info
    table = Table(title=f"dataset {art.name}", show_header=False, title_justify="left")
    table.add_row("source", str(info.get("source")))
    table.add_row(
        "images",
        f"{info['num_images']} ({info['num_train']} train / {info['num_test']} test, split: {info['split_from']})",
    )
    if info.get("subset"):
        table.add_row("subset", info["subset"])
    table.add_row(
        "size",
        f"{art.config.get('size')} px"
        + (f", ZCA-whitened (eps {art.config.get('zca_eps')})" if art.config.get("zca") else ""),
    )
    table.add_row("classes", f"{len(info['class_names'])}: {', '.join(info['class_names'])}")
    table.add_row("true domains", ", ".join(info["domain_names"]) if info.get("domain_names") else "none")
    if info.get("skipped_files"):
        table.add_row("skipped files", f"{len(info['skipped_files'])} undecodable (listed in meta.yaml)")
    return table


def labels_table(art: Artifact, true_domain_names: list[str] | None) -> Table:
    cfg = art.config
    table = Table(
        title=f"pseudo-domains {art.name} ({cfg['labeler']}, D={cfg['num_domains']}, beta={cfg['beta']})",
        title_justify="left",
    )
    table.add_column("pseudo-domain", justify="right")
    table.add_column("images", justify="right")
    per_class = art.tensor("counts_per_class")
    table.add_column("per class (min-max)", justify="right")
    for d, n in enumerate(art.info["counts"]):
        table.add_row(str(d), str(n), f"{int(per_class[d].min())}-{int(per_class[d].max())}")
    return table


def agreement_table(art: Artifact) -> Table | None:
    scores = art.metrics.get("agreement")
    if not scores:
        return None
    table = Table(title="agreement with the true domains (train split)", title_justify="left")
    for name in ("NMI", "ARI", "purity"):
        table.add_column(name, justify="right")
    table.add_row(*(f"{scores[k]:.3f}" for k in ("nmi", "ari", "purity")))
    return table


@guarded
@config_options(DatasetConfig, into="dataset_settings")
@config_options(label_stage.LabelConfig, short={"num_domains": "-D"})
def label(
    ctx: typer.Context,
    path: Annotated[
        Optional[str],
        typer.Argument(
            help=(
                "dataset: image folder, CIFAR folder, .npz, builtin:demo, or a dataset artifact directory; "
                "default: the workspace's latest dataset"
            )
        ),
    ] = None,
    config: Annotated[
        Optional[str], typer.Option("--config", "-c", help="YAML preset (path or shipped name, e.g. pacs_64)")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="recompute even when a cached artifact exists")] = False,
    as_json: Annotated[bool, JSON_OPTION] = False,
    settings: dict | None = None,
    dataset_settings: dict | None = None,
) -> None:
    """Ingest a dataset (cached) and assign FFT pseudo-domain labels to its training split.

    Prints the pseudo-domain sizes and, when the dataset has true domains,
    their agreement with them (NMI, ARI, purity).
    """
    res, progress = run_stage(
        ctx, api.label, path, preset=config, dataset_config=dataset_settings, force=force, **settings
    )
    lab_art, data_art, hit = res.artifact, res.inputs["dataset"], res.cache_hit
    if "dataset" in res.inputs_cached:
        ingested = (
            "cached - skipping ingestion"
            if res.inputs_cached["dataset"]
            else (f"ingested in {cost_line(data_art.meta.get('cost', {}))}")
        )
        progress.note(f"dataset {data_art.name}: {ingested}")
    done = (
        "cached - skipping (use --force to recompute)"
        if hit
        else f"computed in {cost_line(lab_art.meta.get('cost', {}))}"
    )
    progress.note(f"labels {lab_art.name}: {done}")
    if as_json:
        print_json(artifact_json(lab_art, hit) | {"dataset": artifact_json(data_art)})
        return
    if progress.enabled:
        print_table(dataset_table(data_art))
        print_table(labels_table(lab_art, data_art.info.get("domain_names")))
        agree = agreement_table(lab_art)
        if agree is not None:
            print_table(agree)
    result_line("labels", lab_art.path)
