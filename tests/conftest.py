"""Shared fixtures: a temporary workspace, tiny image trees and npz files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stages.artifacts import Workspace

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path / "ws")


def write_image(path: Path, size: int = 12, mode: str = "RGB", seed: int = 0) -> Path:
    """A random image file of ``mode`` at ``path`` (format from the suffix)."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "I;16":
        Image.fromarray(rng.integers(0, 65535, (size, size), dtype=np.uint16)).save(path)
    elif mode == "RGBA":
        Image.fromarray(rng.integers(0, 255, (size, size, 4), dtype=np.uint8), "RGBA").save(path)
    elif mode == "L":
        Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8), "L").save(path)
    elif mode == "P":
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).convert("P").save(path)
    else:
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)
    return path


def make_tree(root: Path, domains: list[str] | None, classes: list[str], per: int = 3, prefix: str = "") -> Path:
    """root/[domain/]class/img_i.png with ``per`` images in each leaf folder."""
    for d in domains or [None]:
        for c in classes:
            for i in range(per):
                parts = [p for p in (prefix, d, c) if p]
                write_image(root.joinpath(*parts, f"img_{i}.png"), seed=hash((d, c, i)) % 1000)
    return root


def make_npz(
    path: Path, n: int = 40, size: int = 16, classes: int = 3, domains: int | None = 2, split: bool = True, **override
) -> Path:
    rng = np.random.default_rng(0)
    arrays = {
        "images": rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8),
        "labels": np.arange(n) % classes,
        "class_names": np.array([f"c{i}" for i in range(classes)]),
    }
    if domains:
        arrays["domains"] = (np.arange(n) // classes) % domains
        arrays["domain_names"] = np.array([f"d{i}" for i in range(domains)])
    if split:
        arrays["split"] = (np.arange(n) % 5 == 0).astype(np.int64)
    arrays.update(override)
    np.savez(path, **arrays)
    return path
