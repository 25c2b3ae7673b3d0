"""Condensation split by class across torchrun processes (gloo, 2 ranks on the CPU) writes the one-process set."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from stages.methods.checkpoint import CKPT_META
from tests.conftest import make_npz

ROOT = Path(__file__).resolve().parents[1]
ENV = os.environ | {"OMP_NUM_THREADS": "1"}
COMMON = ["--ipc", "2", "--no-domain-aware", "--batch-real", "24", "--compile", "off", "--json"]
SETS = ["--ipc", "2", "--batch-real", "24", "--compile", "off", "--json"]


def _chddl(ws: Path, *args: str, ranks: int = 0, **kw) -> subprocess.CompletedProcess:
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks)] if ranks else []
    cmd = [sys.executable, *launcher, "-m", "chddl_cli", "-q", "-w", str(ws), *args]
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, cwd=ROOT, timeout=600, **kw)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> Path:
    ws = tmp_path_factory.mktemp("shard") / "ws"
    out = _chddl(ws, "label", "builtin:demo", "--size", "16")
    assert out.returncode == 0, out.stderr[-2000:]
    out = _chddl(ws, "train-teacher", "--epochs", "1")  # SRe2L's teacher
    assert out.returncode == 0, out.stderr[-2000:]
    return ws


def _kill_every_process_naming(path: Path) -> None:
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and str(path).encode() in (proc / "cmdline").read_bytes():
                os.kill(int(proc.name), 9)
        except OSError:
            pass  # gone meanwhile


def _copy(ws: Path, to: Path) -> Path:
    shutil.copytree(ws, to)
    return to


def _images(result: subprocess.CompletedProcess) -> tuple[dict, torch.Tensor]:
    assert result.returncode == 0, result.stderr[-3000:]
    payload = json.loads(result.stdout)
    return payload, load_file(str(Path(payload["artifact"]) / "tensors.safetensors"))["images"]


def _two_ways(labelled: Path, tmp_path: Path, args: list[str]) -> tuple[dict, dict, torch.Tensor, torch.Tensor]:
    single, one = _images(_chddl(_copy(labelled, tmp_path / "one"), *args))
    multi, two = _images(_chddl(_copy(labelled, tmp_path / "two"), *args, ranks=2))
    return single, multi, one, two


def _history(payload: dict) -> torch.Tensor:
    return load_file(str(Path(payload["artifact"]) / "tensors.safetensors"))["loss_history"]


@pytest.mark.slow
@pytest.mark.parametrize("base, tolerance", [("dm", 1e-5), ("dc", 1e-5), ("rded", 0.0)])
def test_two_ranks_write_the_one_process_set(labelled, tmp_path, base, tolerance) -> None:
    single, multi, one, two = _two_ways(labelled, tmp_path, ["condense", "--base", base, "--iterations", "3", *COMMON])
    assert multi["name"] == single["name"]  # the same cache key whatever the number of processes
    assert (one - two).abs().max().item() <= tolerance
    assert multi["cost"]["world_size"] == 2 and len(multi["cost"]["per_rank"]) == 2
    assert all(r["peak_rss_bytes"] > 0 and r["wall_s"] > 0 for r in multi["cost"]["per_rank"])


@pytest.mark.slow
@pytest.mark.parametrize("base, extra", [("dm", []), ("sre2l", []), ("dm", ["--domain-views", "one"])])
def test_chddl_on_two_ranks_writes_the_one_process_set(labelled, tmp_path, base, extra) -> None:
    # statistics that span both ranks' classes (CHDDL's per-domain means; SRe2L's batch and per-domain
    # batch-norm statistics) are float64 sums, summed over the ranks; one drawn domain is the same on every rank
    args = ["condense", "--base", base, "--domain-aware", "--iterations", "3", *extra, *SETS]
    single, multi, one, two = _two_ways(labelled, tmp_path, args)
    assert multi["name"] == single["name"]
    assert torch.allclose(_history(multi), _history(single), rtol=1e-6, atol=0)
    assert (one - two).abs().max().item() <= 1e-6


@pytest.mark.slow
def test_a_set_made_by_two_ranks_is_a_cache_hit_for_one_process(labelled, tmp_path) -> None:
    ws = _copy(labelled, tmp_path / "ws")
    args = ["condense", "--base", "dm", "--iterations", "2", *COMMON]
    multi, _ = _images(_chddl(ws, *args, ranks=2))
    again, _ = _images(_chddl(ws, *args))
    assert again["cache_hit"] and again["artifact"] == multi["artifact"]


@pytest.mark.slow
def test_an_interrupted_two_rank_run_resumes_in_one_process_to_the_same_set(labelled, tmp_path) -> None:
    args = ["condense", "--base", "dm", "--iterations", "30", "--checkpoint-every", "2", *COMMON]
    _, reference = _images(_chddl(_copy(labelled, tmp_path / "ref"), *args))
    ws = _copy(labelled, tmp_path / "ws")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m"]
    job = subprocess.Popen(
        [*launcher, "chddl_cli", "-q", "-w", str(ws), *args],
        env=ENV,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while (
        not list((ws / "partial").glob(f"condensed-*/{CKPT_META}"))
        and time.monotonic() < deadline
        and job.poll() is None
    ):
        time.sleep(0.05)
    _kill_every_process_naming(ws)  # torchrun and its ranks (in sessions of their own) die at once, as on a lost node
    job.wait()
    assert not list((ws / "artifacts").glob("condensed-*")), "the run finished before it could be interrupted"
    resumed, images = _images(_chddl(ws, *args))
    assert resumed["metrics"]["resumed_from"] > 0
    assert (images - reference).abs().max().item() <= 1e-5


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, message",
    [
        (["--base", "dc", "--domain-aware"], "CHDDL's domain loss with --base dc is not split across processes"),
        (["--base", "dm", "--domain-aware", "--schedule", "algorithm1"], "--schedule algorithm1 steps one class"),
        (["--base", "mtt", "--no-domain-aware", "--max-start-epoch", "1", "--expert-epochs", "1"], "--base mtt cannot"),
    ],
)
def test_what_cannot_be_split_is_refused_in_one_line_with_nothing_written(labelled, tmp_path, args, message) -> None:
    ws = _copy(labelled, tmp_path / "ws")
    if "mtt" in args:
        made = _chddl(ws, "pretrain-experts", "--num-experts", "1", "--epochs", "2", "--no-domain-experts")
        assert made.returncode == 0, made.stderr[-2000:]
    before = sorted(p.name for p in (ws / "artifacts").iterdir())
    out = _chddl(ws, "condense", *args, "--ipc", "2", "--iterations", "2", ranks=2)
    assert out.returncode != 0
    assert f"error: {message}".lower() in out.stderr.lower()
    assert sorted(p.name for p in (ws / "artifacts").iterdir()) == before


@pytest.mark.slow
def test_more_ranks_than_classes_is_refused(tmp_path) -> None:
    ws = tmp_path / "ws"
    npz = make_npz(tmp_path / "two_classes.npz", n=40, classes=2)
    assert _chddl(ws, "label", str(npz)).returncode == 0
    out = _chddl(ws, "condense", "--base", "dm", "--no-domain-aware", "--ipc", "2", "--iterations", "1", ranks=3)
    assert out.returncode != 0
    assert "error: --nproc-per-node 3 exceeds the 2 classes" in out.stderr
    assert not list((ws / "artifacts").glob("condensed-*"))


@pytest.mark.slow
def test_two_ranks_train_a_data_parallel_teacher_as_good_as_one_process(labelled, tmp_path) -> None:
    args = ["train-teacher", "--epochs", "6", "--json"]
    single = json.loads(_chddl(_copy(labelled, tmp_path / "one"), *args).stdout)
    out = _chddl(_copy(labelled, tmp_path / "two"), *args, ranks=2)
    assert out.returncode == 0, out.stderr[-3000:]
    multi = json.loads(out.stdout)
    # each rank's batch norm sees its half of a batch: another teacher, under its own key
    assert multi["name"] != single["name"]
    assert multi["cost"]["world_size"] == 2 and len(multi["cost"]["per_rank"]) == 2
    assert abs(multi["metrics"]["test_acc"] - single["metrics"]["test_acc"]) <= 10.0
    assert multi["metrics"]["test_acc"] > 100 / 6 + 20  # well above chance (6 classes)


@pytest.mark.slow
def test_ranks_started_with_different_settings_are_refused_with_nothing_written(labelled, tmp_path) -> None:
    ws = _copy(labelled, tmp_path / "ws")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    jobs = []
    for rank, ipc in ((0, "2"), (1, "3")):  # as two hand-started ranks whose commands differ
        env = ENV | {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1"}
        cmd = [sys.executable, "-m", "chddl_cli", "-q", "-w", str(ws), "condense", "--base", "dm", "--ipc", ipc]
        cmd += ["--no-domain-aware", "--iterations", "1", "--compile", "off"]
        jobs.append(
            subprocess.Popen(
                cmd, env=env | {"MASTER_PORT": str(port)}, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
        )
    errors = [job.communicate(timeout=300)[1].decode() for job in jobs]
    assert all(job.returncode != 0 for job in jobs)
    for err in errors:
        assert "error: the torchrun ranks were started with different settings" in err
        assert "Traceback" not in err
    assert not list((ws / "artifacts").glob("condensed-*"))
