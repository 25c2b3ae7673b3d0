"""The one place that chooses the compute device."""

from __future__ import annotations

import atexit
import os
from datetime import timedelta

import torch
import torch.distributed as dist

from stages.errors import ChddlError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(name: str = "auto") -> torch.device:
    """Turn ``auto|cpu|cuda`` (or ``cuda:N``) into a torch device, refusing
    a CUDA request on a machine without one."""
    local = os.environ.get("LOCAL_RANK")
    if name in ("auto", "cuda") and torch.cuda.is_available() and local is not None:
        return torch.device(f"cuda:{int(local) % torch.cuda.device_count()}")  # torchrun: one GPU per process
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ChddlError(f"device '{name}' requested but CUDA is not available here; use --device cpu or auto")
        return torch.device(name)
    raise ChddlError(f"unknown device '{name}'; valid: {', '.join(DEVICE_CHOICES)}")


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` on ``device``. A host tensor bound for a GPU is copied from pinned memory without blocking:
    a copy from pageable memory makes the host wait for the GPU to drain, so the Python loop could no longer
    queue the next kernels while the GPU runs (tests/test_cuda.py checks the hot loop for such waits)."""
    if device.type != "cuda" or t.device.type != "cpu":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def _leave_distributed() -> None:
    if not dist.is_initialized():
        return
    # Every rank reaches this point before any tears its group down: a gloo rank destroyed while its
    # peer's threads still talk to it ended in "terminate called without an active exception" (SIGABRT).
    try:
        if dist.get_backend() == "gloo":
            dist.monitored_barrier(timeout=timedelta(seconds=60))
        else:
            dist.barrier()
    except Exception:  # noqa: BLE001 - a peer already failed: nothing left to wait for
        pass
    dist.destroy_process_group()


def init_distributed() -> None:
    """Join the torchrun process group when launched by torchrun (gloo on CPU, nccl on GPU).

    The group is destroyed at exit, after a barrier: left to the interpreter's
    teardown, or destroyed while a peer was still finishing, a gloo rank could
    abort (SIGABRT)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available() and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        atexit.register(_leave_distributed)
