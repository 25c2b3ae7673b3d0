"""Costs of the workspace's safety nets (issue: a workspace no command can mislead).

1. A condense checkpoint (the loop's whole state, written atomically) for a
   given set size, against the interval between checkpoints.
2. Content-hashing an image-folder tree (the dataset key), cold (no digest
   cache) and warm (every file's hash reused by size and mtime), on a
   generated tree of PACS's size (9,991 files of ~21 KB, the mean size of
   $DATA/pacs_mini) unless --tree names a real one.

    python bench/workspace_costs.py [--tree DIR]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import _tree  # noqa: F401  (this checkout first on sys.path)
import numpy as np
import torch

from stages.data.ingest import source_fingerprint
from stages.methods.checkpoint import save_checkpoint

#: (label, images, size, domains) of the sets timed; the state holds images, masks and both momentum buffers
SETS = [
    ("PACS 32 px IPC 10 + CHDDL", 70, 32, 4),
    ("PACS 64 px IPC 10 + CHDDL", 70, 64, 4),
    ("CIFAR-100 32 px IPC 50 + CHDDL", 5000, 32, 4),
]


def checkpoint_cost(folder: Path) -> list[tuple[str, float, float]]:
    out = []
    for label, n, size, d in SETS:
        state = {
            "param/images/0": torch.randn(n, 3, size, size),
            "opt/images/0/momentum_buffer": torch.randn(n, 3, size, size),
            "param/masks/0": torch.randn(n, d, 3, size, size),
            "opt/masks/0/momentum_buffer": torch.randn(n, d, 3, size, size),
            "history": torch.zeros(20000, 2),
        }
        mb = sum(t.numel() * t.element_size() for t in state.values()) / 2**20
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            save_checkpoint(folder / label.replace(" ", "_"), "k", 1, state)
            times.append(time.perf_counter() - t0)
        out.append((label, mb, sorted(times)[1]))
    return out


def make_tree(root: Path, files: int = 9991, size: int = 21_000) -> Path:
    rng = np.random.default_rng(0)
    for i in range(files):
        folder = root / f"domain{i % 4}" / f"class{i % 7}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i}.jpg").write_bytes(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
    return root


def hash_cost(tree: Path, cache: Path) -> tuple[int, float, float, float]:
    files = sum(len(f) for _, _, f in os.walk(tree))
    t0 = time.perf_counter()
    source_fingerprint("folder", tree, cache)
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    source_fingerprint("folder", tree, cache)
    warm = time.perf_counter() - t0
    mb = sum(p.stat().st_size for p in tree.rglob("*") if p.is_file()) / 2**20
    return files, mb, cold, warm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=Path, help="an image-folder tree to hash (default: a generated PACS-sized one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print("| checkpoint of | state MB | s per checkpoint | share of a 1-minute / 5-minute interval |")
        print("|---|---|---|---|")
        for label, mb, s in checkpoint_cost(Path(tmp)):
            print(f"| {label} | {mb:.1f} | {s:.3f} | {100 * s / 60:.2f}% / {100 * s / 300:.2f}% |")
        tree = args.tree or make_tree(Path(tmp) / "tree")
        files, mb, cold, warm = hash_cost(tree, Path(tmp) / "digests.json")
        print(
            f"\nfolder key of {tree if args.tree else 'a generated PACS-sized tree'}: {files} files, {mb:.0f} MB: "
            f"cold {cold:.2f} s (every file hashed; the OS page cache is warm from writing), warm {warm:.2f} s "
            f"(hashes reused by size and mtime)"
        )


if __name__ == "__main__":
    main()
