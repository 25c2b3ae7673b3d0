"""The reproduction scripts parse, and refuse bad options before running anything."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

SCRIPTS = sorted((Path(__file__).resolve().parents[1] / "bench" / "reproduce").glob("*.sh"))
EXPERIMENTS = [s for s in SCRIPTS if "lib.sh" in s.read_text() and s.name != "lib.sh"]


def test_every_experiment_has_a_script() -> None:
    names = {s.stem for s in EXPERIMENTS}
    assert {"pacs_multidomain", "pacs_domains", "pacs_labelers", "pacs_sweeps", "cifar10", "cifar10_xarch"} <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda s: s.name)
def test_script_is_valid_bash(script: Path) -> None:
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0


@pytest.mark.parametrize("script", EXPERIMENTS, ids=lambda s: s.name)
def test_unknown_scale_is_refused_before_any_work(script: Path, tmp_path: Path) -> None:
    out = subprocess.run(
        ["bash", str(script), "--scale", "huge", "--workdir", str(tmp_path / "ws")], capture_output=True, text=True
    )
    assert out.returncode == 2 and "--scale must be smoke, cpu or full" in out.stderr
    assert not (tmp_path / "ws").exists()


@pytest.mark.parametrize("script", EXPERIMENTS, ids=lambda s: s.name)
def test_cpu_scale_needs_the_data_folder(script: Path, tmp_path: Path) -> None:
    out = subprocess.run(
        ["bash", str(script), "--scale", "cpu", "--workdir", str(tmp_path / "ws")], capture_output=True, text=True
    )
    assert out.returncode != 0 and "--data DIR" in out.stderr


@pytest.mark.parametrize("script", EXPERIMENTS, ids=lambda s: s.name)
@pytest.mark.parametrize(("ipcs", "got"), [("1 50", "50"), (" ", "nothing")])
def test_an_ipc_other_than_1_or_10_is_refused_before_any_work(
    script: Path, tmp_path: Path, ipcs: str, got: str
) -> None:
    out = subprocess.run(
        ["bash", str(script), "--scale", "smoke", "--ipcs", ipcs, "--workdir", str(tmp_path / "ws")],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and f"--ipcs takes 1 and/or 10, got {got}" in out.stderr
    assert not (tmp_path / "ws").exists()
