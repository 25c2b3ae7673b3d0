"""The one place that chooses the compute device."""

from __future__ import annotations

import atexit
import os

import torch
import torch.distributed as dist

from stages.errors import ChddlError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(name: str = "auto") -> torch.device:
    """Turn ``auto|cpu|cuda`` (or ``cuda:N``) into a torch device, refusing
    a CUDA request on a machine without one."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ChddlError(f"device '{name}' requested but CUDA is not available here; use --device cpu or auto")
        return torch.device(name)
    raise ChddlError(f"unknown device '{name}'; valid: {', '.join(DEVICE_CHOICES)}")


def _leave_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def init_distributed() -> None:
    """Join the torchrun process group when launched by torchrun (gloo on CPU, nccl on GPU).

    The group is destroyed at exit: left to the interpreter's teardown, a gloo
    rank could abort (SIGABRT) when its peer had already gone."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available() and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        atexit.register(_leave_distributed)
