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
    """Write tensors then metadata, each via a temporary file and os.replace;
    the metadata (written last) names the iteration the tensors belong to."""
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
    try:
        meta = yaml.safe_load((folder / CKPT_META).read_text())
        with safetensors.safe_open(str(folder / CKPT_TENSORS), framework="pt") as fh:
            header = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except (OSError, yaml.YAMLError, safetensors.SafetensorError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("key") != key or header.get("key") != key:
        return None
    if str(meta.get("iteration")) != header.get("iteration"):
        return None
    return int(meta["iteration"]), tensors
