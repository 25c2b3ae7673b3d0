"""Checkpoints of an unfinished condensation: written atomically, no pickle."""

from __future__ import annotations

import os
from pathlib import Path

import safetensors.torch
import torch
import yaml

CKPT_TENSORS = "checkpoint.safetensors"
CKPT_META = "checkpoint.yaml"


def save_checkpoint(folder: Path, key: str, iteration: int, tensors: dict[str, torch.Tensor]) -> None:
    """Write tensors then metadata, each via a temporary file and os.replace.
    The tensors file carries its key and iteration in its header, so it alone
    is a complete checkpoint; the YAML beside it is for people to read."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{CKPT_TENSORS}.tmp"
    safetensors.torch.save_file(
        {k: v.detach().cpu().contiguous() for k, v in tensors.items()},
        str(tmp),
        metadata={"iteration": str(iteration), "key": key},
    )
    os.replace(tmp, folder / CKPT_TENSORS)
    meta_tmp = folder / f".{CKPT_META}.tmp"
    meta_tmp.write_text(yaml.safe_dump({"key": key, "iteration": iteration}))
    os.replace(meta_tmp, folder / CKPT_META)


def load_checkpoint(folder: Path, key: str) -> tuple[int, dict[str, torch.Tensor]] | None:
    """(iteration, tensors) of a consistent checkpoint for ``key``, else None."""
    # A process killed between the two renames of save_checkpoint leaves the new tensors beside the old YAML:
    # the tensors file, replaced atomically and naming its own iteration, is the checkpoint.
    try:
        with safetensors.safe_open(str(folder / CKPT_TENSORS), framework="pt") as fh:
            header = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        iteration = int(header.get("iteration", ""))
    except (OSError, safetensors.SafetensorError, ValueError):
        return None
    if header.get("key") != key:
        return None
    return iteration, tensors
