"""Every command, given an input artifact damaged in each way the store detects: one line on stderr and a
non-zero exit (or, for report, an explicit skip), and no file outside the command's own output changed."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Callable

import pytest
import yaml
from typer.testing import CliRunner

from chddl_cli.app import app
from tests.conftest import make_npz

runner = CliRunner()


def _flip_middle_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _set_meta(art: Path, change: Callable[[dict], None]) -> None:
    meta = yaml.safe_load((art / "meta.yaml").read_text())
    change(meta)
    (art / "meta.yaml").write_text(yaml.safe_dump(meta))


#: the artifacts with data files beside tensors.safetensors: experts (one file per expert)
BESIDE = "a data file beside the tensors truncated"

#: each way the store can tell an artifact folder is damaged
DAMAGE: dict[str, Callable[[Path], None]] = {
    "meta.yaml missing": lambda a: (a / "meta.yaml").unlink(),
    "meta.yaml not YAML": lambda a: (a / "meta.yaml").write_text("a: [unclosed\n"),
    "meta.yaml garbage that parses": lambda a: (a / "meta.yaml").write_text("::: not yaml {{\n"),
    "unknown schema": lambda a: _set_meta(a, lambda m: m.update(schema="someone-else/9")),
    "meta.yaml lacks its key": lambda a: _set_meta(a, lambda m: m.pop("key")),
    "tensors missing": lambda a: (a / "tensors.safetensors").unlink(),
    "tensors corrupted": lambda a: _flip_middle_byte(a / "tensors.safetensors"),
    "tensors truncated": lambda a: (a / "tensors.safetensors").write_bytes(
        (a / "tensors.safetensors").read_bytes()[: (a / "tensors.safetensors").stat().st_size // 2]
    ),
    BESIDE: lambda a: [
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
        for f in a.glob("*.safetensors")
        if f.name not in ("tensors.safetensors", "final_state.safetensors")
    ],
}

#: command line (after the workspace), the stage of the input damaged, and the folder the command may write
COMMANDS: dict[str, tuple[list[str], str, str | None]] = {
    "condense (labels)": (["condense", "--ipc", "1", "--iterations", "1", "--batch-real", "8"], "labels", None),
    "condense (dataset)": (["condense", "--ipc", "1", "--iterations", "1", "--batch-real", "8"], "dataset", None),
    "condense mtt (experts)": (
        ["condense", "--base", "mtt", "--ipc", "1", "--iterations", "1", "--syn-steps", "1", "--expert-epochs", "1"]
        + ["--max-start-epoch", "1", "--no-domain-aware"],
        "experts",
        None,
    ),
    "pretrain-experts (labels)": (["pretrain-experts", "--num-experts", "1", "--epochs", "1"], "labels", None),
    "train-teacher (dataset)": (["train-teacher", "--epochs", "1"], "dataset", None),
    "evaluate (condensed)": (["evaluate", "--runs", "1", "--epochs", "1"], "condensed", None),
    "export (condensed)": (["export", "--out", "{tmp}/export"], "condensed", "export"),
    "report (condensed)": (["report"], "condensed", "ws/report"),
}


#: the command that writes each stage's artifacts
MAKER = {"dataset": "label", "labels": "label", "experts": "pretrain-experts", "condensed": "condense"}


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Path:
    """A workspace holding one artifact of every stage the commands read."""
    root = tmp_path_factory.mktemp("damage")
    ws = str(root / "ws")
    npz = make_npz(root / "d.npz", n=60)
    for args in (
        ["label", str(npz), "--size", "16", "-D", "2"],
        ["condense", "--ipc", "1", "--iterations", "1", "--batch-real", "8", "--seed", "7"],
        ["pretrain-experts", "--num-experts", "1", "--epochs", "1", "--no-domain-experts"],
    ):
        result = runner.invoke(app, ["-q", "-w", ws, *args], catch_exceptions=False)
        assert result.exit_code == 0, result.output
    (root / "d.npz").unlink()  # commands must work from the workspace alone
    return root / "ws"


def _snapshot(root: Path, skip: Path | None) -> dict[str, str]:
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not (skip is not None and (path == skip or skip in path.parents)):
            out[str(path.relative_to(root))] = hashlib.blake2b(path.read_bytes(), digest_size=8).hexdigest()
    return out


CASES = [(c, d) for c in COMMANDS for d in DAMAGE if d != BESIDE or COMMANDS[c][1] == "experts"]


@pytest.mark.parametrize("command, damage", CASES)
def test_a_damaged_input_stops_the_command_in_one_line_and_changes_nothing(made, tmp_path, command, damage) -> None:
    args, stage, writes = COMMANDS[command]
    shutil.copytree(made, tmp_path / "ws")
    victim = next((tmp_path / "ws" / "artifacts").glob(f"{stage}-*"))
    DAMAGE[damage](victim)
    own_output = tmp_path / writes if writes else None
    before = _snapshot(tmp_path, own_output)
    result = runner.invoke(
        app, ["-q", "-w", str(tmp_path / "ws"), *[a.format(tmp=tmp_path) for a in args]], catch_exceptions=False
    )
    assert "Traceback" not in result.output
    if command.startswith("report"):  # report goes on, listing the damaged folder under its own heading
        assert result.exit_code == 0, result.output
        skipped = (tmp_path / "ws" / "report" / "report.md").read_text().split("## Skipped artifacts")[1]
        assert victim.name in skipped
    else:
        assert result.exit_code != 0, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
        assert victim.name in lines[0], lines[0]
        assert f"chddl {MAKER[stage]}" in lines[0], lines[0]  # the fix names the command that rewrites it
    assert _snapshot(tmp_path, own_output) == before
