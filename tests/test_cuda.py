"""Every stage on CUDA: runs, CPU agreement, no host syncs in the hot loop,
exact resume, torchrun with nccl. Marked ``cuda``; skipped without a GPU.

    python -m pytest -m cuda          # on a machine with a GPU (bench/gpu/check.sh runs it)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from stages.artifacts import Workspace
from stages.condense import CondenseConfig, _build, _expert_store, _settings
from stages.condense import run as condense_run
from stages.config import build
from stages.data.dataset import load_dataset
from stages.data.ingest import DatasetConfig, ingest
from stages.evaluate import EvaluateConfig, from_condensed
from stages.evaluate import run as evaluate_run
from stages.label import LabelConfig, load_labels
from stages.label import run as label_run
from stages.methods.loop import Loop, iteration_generator
from stages.pretrain_experts import ExpertsConfig
from stages.pretrain_experts import run as experts_run
from stages.progress import NullProgress
from tests.conftest import make_npz

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
CUDA = torch.device("cuda")
ROOT = Path(__file__).resolve().parents[1]
TINY = {"ipc": 2, "iterations": 3, "batch_real": 8, "log_every": 1, "compile": "off", "checkpoint_every": 2}
MTT = {"syn_steps": 2, "expert_epochs": 1, "max_start_epoch": 2, "lr_img": 100.0}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cuda")
    ws = Workspace(root / "ws")
    ds = load_dataset(ingest(str(make_npz(root / "d.npz", n=60, size=16)), build(DatasetConfig, {"size": 16}), ws)[0])
    labels = load_labels(label_run(ds, build(LabelConfig, {"num_domains": 2}), ws, device=CUDA)[0], ds)
    experts = experts_run(
        ds, labels, build(ExpertsConfig, {"num_experts": 1, "epochs": 3, "batch_size": 32}), ws, device=CUDA
    )[0]
    return ws, ds, labels, experts


def _cfg(base: str, aware: bool, **kw) -> CondenseConfig:
    return build(CondenseConfig, TINY, MTT if base == "mtt" else {}, {"base": base, "domain_aware": aware}, kw)


@pytest.mark.parametrize("base", ["dm", "dc", "mtt"])
@pytest.mark.parametrize("aware", [False, True])
def test_every_stage_runs_on_cuda(setup, base, aware) -> None:
    ws, ds, labels, experts = setup
    art, _ = condense_run(ds, labels, _cfg(base, aware), ws, experts=experts if base == "mtt" else None, device=CUDA)
    assert art.info["device"].startswith("cuda") and torch.isfinite(art.tensor("images")).all()
    assert art.meta["cost"]["peak_cuda_bytes"] > 0
    ev, _ = evaluate_run(from_condensed(art, ds), ds, build(EvaluateConfig, {"runs": 2, "epochs": 2}), ws, device=CUDA)
    assert 0 <= ev.metrics["convnet"]["mean"] <= 100


def test_the_report_of_a_cuda_workspace(setup) -> None:
    from stages import report

    ws = setup[0]
    _, page = report.run(ws)
    assert "peak CUDA GB" in page.read_text()


def _objective(setup, base: str, device: torch.device):
    ws, ds, labels, experts = setup
    cfg = _cfg(base, True).resolved()
    store = _expert_store(experts, ds, labels, cfg) if base == "mtt" else None
    return _build(ds, labels, cfg, device, store)


@pytest.mark.parametrize("base", ["dm", "dc", "mtt"])
def test_one_step_agrees_with_cpu(setup, base) -> None:
    """Same seed, same networks (copied from CPU), same batches and augmentation: the losses agree to 1e-3
    (relative) and the image gradients point the same way (cosine > 0.999), TF32 off."""
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    out = {}
    for device in (torch.device("cpu"), CUDA):
        method, objective, images, _, _ = _objective(setup, base, device)
        g = iteration_generator(0, 0)
        method.new_round(0, objective.roles, g)
        if device.type == "cuda" and base != "mtt":
            for role, net in method.nets.nets.items():
                net.load_state_dict({k: v.to(device) for k, v in out["cpu"][2][role].items()})
        l_cls, l_dom = objective.losses(images, g)
        (l_cls + 0.1 * l_dom).backward()
        nets = (
            {r: {k: v.detach().cpu() for k, v in n.state_dict().items()} for r, n in method.nets.nets.items()}
            if base != "mtt"
            else {}
        )
        out[device.type] = (torch.stack([l_cls.detach(), l_dom.detach()]).cpu(), images.grad.detach().cpu(), nets)
    assert torch.allclose(out["cpu"][0], out["cuda"][0], rtol=1e-3)
    cosine = torch.nn.functional.cosine_similarity(out["cpu"][1].flatten(), out["cuda"][1].flatten(), dim=0)
    assert cosine > 0.999


@pytest.mark.parametrize("base", ["dm", "dc", "mtt"])
def test_the_hot_loop_makes_no_host_device_sync(setup, base, tmp_path) -> None:
    method, objective, images, _, _ = _objective(setup, base, CUDA)
    cfg = _cfg(base, True).resolved()
    loop = Loop(method, objective, images, _settings(cfg, method), "k", tmp_path / "p", NullProgress())
    g = iteration_generator(0, 0)
    method.new_round(0, objective.roles, g)
    loop.step(g)  # warm-up: allocations, lazy initialisation
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        g = iteration_generator(0, 1)
        method.new_round(1, objective.roles, g)
        loop.step(g)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("base", ["dm", "mtt"])
def test_a_resumed_cuda_run_equals_an_uninterrupted_one(setup, base, tmp_path) -> None:
    _, ds, labels, experts = setup
    cfg = _cfg(base, True, iterations=5)
    extra = {"experts": experts} if base == "mtt" else {}
    full, _ = condense_run(ds, labels, cfg, Workspace(tmp_path / "full"), device=CUDA, **extra)
    ws = Workspace(tmp_path / "resumed")
    with pytest.raises(KeyboardInterrupt):
        condense_run(ds, labels, cfg, ws, device=CUDA, stop_after=3, **extra)
    resumed, _ = condense_run(ds, labels, cfg, ws, device=CUDA, **extra)
    assert resumed.metrics["resumed_from"] >= 2
    # same kernels on the same device: equal up to the non-deterministic order of CUDA atomics
    assert torch.allclose(full.tensor("images"), resumed.tensor("images"), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "command",
    [
        ["pretrain-experts", "--num-experts", "2", "--epochs", "2"],
        ["evaluate", "--baseline", "random", "--ipc", "2", "--runs", "2", "--epochs", "2"],
    ],
)
def test_torchrun_with_nccl(setup, command, tmp_path) -> None:
    """nccl refuses two ranks on one GPU, so one rank runs the nccl code path (process group, barriers, gathers)."""
    _, ds, _, _ = setup
    ws = str(tmp_path / "ws")
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    subprocess.run(
        [sys.executable, "-m", "chddl_cli", "-q", "-w", ws, "label", str(ds.artifact.path)],
        check=True,
        env=env,
        capture_output=True,
        cwd=ROOT,
    )
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "1",
            "-m",
            "chddl_cli",
            "-q",
            "-w",
            ws,
            "--device",
            "cuda",
            *command,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-2000:]


@pytest.mark.parametrize("base", ["mtt", "datm"])
def test_the_compiled_student_agrees_with_the_eager_one_on_cuda(setup, base) -> None:
    """MTT's and DATM's compiled student step (inductor, Triton) against the eager step on the GPU: the same loss
    to 1e-4 (relative) and image gradients pointing the same way (cosine > 0.999), TF32 off."""
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    ws, ds, labels, experts = setup
    out = []
    for compiled in ("off", "on"):
        settings = {"init": "real"} if base == "datm" else {}
        cfg = build(CondenseConfig, TINY, MTT, {"base": base, "domain_aware": False, "compile": compiled}, settings)
        cfg = cfg.resolved()
        method, objective, images, _, _ = _build(ds, labels, cfg, CUDA, _expert_store(experts, ds, labels, cfg))
        assert (method.compiled_step is not None) == (compiled == "on")
        loss = objective.class_loss(images, iteration_generator(0, 0))
        loss.backward()
        out.append((loss.detach().cpu(), images.grad.detach().cpu()))
    (loss_eager, grad_eager), (loss_compiled, grad_compiled) = out
    assert torch.allclose(loss_compiled, loss_eager, rtol=1e-4)
    assert torch.nn.functional.cosine_similarity(grad_eager.flatten(), grad_compiled.flatten(), dim=0) > 0.999


def test_dm_chddl_compiled_views_agree_with_eager_ones_on_cuda(setup) -> None:
    """DM + CHDDL's compiled forward passes and views' input gradient (inductor, Triton) against the eager ones
    on the GPU: the same losses to 1e-4 (relative) and image and mask gradients pointing the same way (cosine >
    0.999), TF32 off."""
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    ws, ds, labels, _ = setup
    out = []
    for compiled in ("off", "on"):
        cfg = _cfg("dm", True, compile=compiled, mask_init_mode="normal").resolved()
        method, objective, images, _, _ = _build(ds, labels, cfg, CUDA)
        assert method.embedding.compiled == (compiled == "on")
        method.new_round(0, objective.roles, iteration_generator(0, 0))
        l_cls, l_dom = objective.losses(images, iteration_generator(0, 1))
        (l_cls + 0.1 * l_dom).backward()
        out.append([t.detach().cpu() for t in (l_cls, l_dom, images.grad, objective.masks.z.grad)])
    (c1, d1, gi1, gz1), (c2, d2, gi2, gz2) = out
    assert torch.allclose(c2, c1, rtol=1e-4) and torch.allclose(d2, d1, rtol=1e-4)
    for eager, compiled in ((gi1, gi2), (gz1, gz2)):
        assert torch.nn.functional.cosine_similarity(eager.flatten(), compiled.flatten(), dim=0) > 0.999
