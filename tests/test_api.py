"""The Python API: one call per stage, resolving inputs as the CLI does."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from typer.testing import CliRunner

from chddl_cli.app import app
from stages import api
from stages.errors import ChddlError
from tests.conftest import make_npz

ROOT = Path(__file__).resolve().parents[1]
TINY = {"ipc": 1, "iterations": 2, "batch_real": 8, "compile": "off"}


def test_label_condense_evaluate_and_read_the_accuracy(tmp_path) -> None:
    ws = tmp_path / "ws"
    labelled = api.label(
        str(make_npz(tmp_path / "d.npz", n=60)), workspace=ws, dataset_config={"size": 16}, num_domains=2
    )
    assert labelled.artifact.stage == "labels" and labelled.inputs["dataset"].stage == "dataset"
    cond = api.condense(workspace=ws, **TINY)  # the workspace's latest labels and their dataset
    assert cond.inputs["labels"].name == labelled.artifact.name and not cond.cache_hit
    ev = api.evaluate(workspace=ws, runs=2, epochs=1)  # the latest condensed set
    assert ev.inputs["condensed"].name == cond.artifact.name
    assert 0 <= ev.artifact.metrics["convnet"]["mean"] <= 100
    assert api.condense(workspace=ws, **TINY).cache_hit


def test_the_api_and_the_cli_make_the_same_artifacts(tmp_path) -> None:
    npz = str(make_npz(tmp_path / "d.npz", n=60))
    cli_ws, api_ws = tmp_path / "cli", tmp_path / "api"
    runner = CliRunner()
    assert (
        runner.invoke(app, ["-w", str(cli_ws), "--seed", "3", "label", npz, "--size", "16", "-D", "2"]).exit_code == 0
    )
    args = [
        "-w",
        str(cli_ws),
        "--seed",
        "3",
        "condense",
        "--ipc",
        "1",
        "--iterations",
        "2",
        "--batch-real",
        "8",
        "--compile",
        "off",
        "--tau",
        "0.5",
    ]
    assert runner.invoke(app, args).exit_code == 0
    api.label(npz, workspace=api_ws, dataset_config={"size": 16}, num_domains=2, default_seed=3)
    made = api.condense(workspace=api_ws, default_seed=3, tau=0.5, **TINY).artifact
    assert (cli_ws / "artifacts" / made.name).is_dir()


def test_presets_and_keywords_layer_like_the_cli(tmp_path) -> None:
    ws = tmp_path / "ws"
    api.label("builtin:demo", workspace=ws)
    cond = api.condense(
        workspace=ws, preset="demo", iterations=1, batch_real=8
    ).artifact  # condense/demo, then keywords
    assert cond.config["ipc"] == 5 and cond.config["iterations"] == 1


def test_an_unknown_setting_names_the_valid_ones(tmp_path) -> None:
    with pytest.raises(ChddlError, match="unknown CondenseConfig option 'ipcs'"):
        api.condense(workspace=tmp_path / "ws", ipcs=3)


def test_the_cli_modules_use_the_api_not_the_data_or_artifact_modules() -> None:
    for path in (ROOT / "chddl_cli").glob("*.py"):
        tree = ast.parse(path.read_text())
        modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        modules |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert not {m for m in modules if m.startswith(("stages.data", "stages.artifacts"))}, path.name
