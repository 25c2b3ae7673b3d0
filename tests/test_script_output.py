"""Output for scripts and batch logs: --json, unbroken paths, plain progress lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import make_npz

ROOT = Path(__file__).resolve().parents[1]


def _chddl(ws: Path, *args: str, quiet: bool = False) -> subprocess.CompletedProcess:
    flags = ["-q"] if quiet else []
    return subprocess.run(
        [sys.executable, "-m", "chddl_cli", *flags, "-w", str(ws), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=os.environ | {"OMP_NUM_THREADS": "1", "COLUMNS": "80"},
    )


@pytest.fixture(scope="module")
def deep(tmp_path_factory) -> tuple[Path, Path]:
    """A workspace whose paths are far longer than 80 columns, and a dataset file."""
    root = tmp_path_factory.mktemp("output")
    ws = root / ("a-rather-long-folder-name-" * 4) / "workspace"
    return ws, make_npz(root / "d.npz", n=60)


def test_every_json_command_prints_one_object_and_nothing_else(deep) -> None:
    ws, npz = deep
    runs = {
        "label": _chddl(ws, "label", str(npz), "--size", "16", "-D", "2", "--json"),
        "condense": _chddl(ws, "condense", "--ipc", "1", "--iterations", "2", "--batch-real", "8", "--json"),
        "evaluate": _chddl(ws, "evaluate", "--runs", "1", "--epochs", "1", "--json"),
        "report": _chddl(ws, "report", "--json"),
    }
    for name, out in runs.items():
        assert out.returncode == 0, out.stderr
        assert len(out.stdout.strip().splitlines()) == 1, (name, out.stdout)
        payload = json.loads(out.stdout)
        path = Path(payload["report"] if name == "report" else payload["artifact"])
        assert path.exists(), name
    evaluation = json.loads(runs["evaluate"].stdout)
    assert 0 <= evaluation["metrics"]["convnet"]["mean"] <= 100 and "wall_s" in evaluation["cost"]
    assert json.loads(runs["label"].stdout)["dataset"]["stage"] == "dataset"


def test_the_final_path_line_is_never_broken_on_a_pipe(deep) -> None:
    ws, npz = deep
    out = _chddl(ws, "label", str(npz), "--size", "16", "-D", "2")
    assert out.returncode == 0
    line = out.stdout.strip().splitlines()[-1]
    assert line.startswith("labels: ") and len(line) > 120
    assert Path(line.removeprefix("labels: ")).is_dir()


def test_table_titles_stay_on_one_line_on_a_pipe(deep) -> None:
    ws, npz = deep
    out = _chddl(ws, "label", str(npz), "--size", "16", "-D", "2")
    assert out.returncode == 0
    lines = out.stdout.splitlines()
    assert "agreement with the true domains (train split)" in lines
    assert any(
        line.startswith("pseudo-domains labels-fft-D2-") and line.endswith("(fft, D=2, beta=0.1)") for line in lines
    )


def test_long_stages_log_plain_progress_lines_when_not_on_a_terminal(deep) -> None:
    ws, _ = deep
    out = _chddl(ws, "condense", "--ipc", "1", "--iterations", "3", "--batch-real", "8", "--seed", "4")
    assert out.returncode == 0
    assert "condense dm+chddl-ipc1 (3 it): 3/3 (done," in out.stderr


def test_a_plain_progress_line_gives_rate_and_eta() -> None:
    from chddl_cli.common import _PlainLog, err_console

    log = _PlainLog("condense x", total=10, every=0.0)
    with err_console.capture() as captured:
        log.advance(4, "loss 3.2")
    text = captured.get()
    assert text.startswith("condense x: 4/10 (") and "/s, ETA " in text and "loss 3.2" in text


def test_after_a_resume_the_rate_and_eta_count_only_this_processes_steps(monkeypatch) -> None:
    from chddl_cli import common

    clock = iter([100.0, 110.0, 110.0])
    monkeypatch.setattr(common.time, "monotonic", lambda: next(clock))
    log = common._PlainLog("condense x", total=100, done=90, every=0.0)
    with common.err_console.capture() as captured:
        log.advance(1, "")  # one step in 10 s after resuming at 90: 0.1/s, 9 steps left take 90 s
    assert captured.get() == "condense x: 91/100 (0.1/s, ETA 1m30s, 0m10s elapsed)\n"


def test_a_resumed_bar_starts_at_the_resumed_step_without_a_speed_sample() -> None:
    from chddl_cli.common import RichProgress

    progress = RichProgress(enabled=False)
    with progress.task("condense x", total=100, done=90):
        task = progress._bar.tasks[0]
        assert task.completed == 90 and task.speed is None


def test_quiet_silences_the_progress_lines(deep) -> None:
    ws, _ = deep
    out = _chddl(ws, "condense", "--ipc", "1", "--iterations", "3", "--batch-real", "8", "--seed", "5", quiet=True)
    assert out.returncode == 0 and "3/3" not in out.stderr
