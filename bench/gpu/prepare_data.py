"""A carry-able PACS 64 px subset for the device check (the working tree
that travels to the device holds at most 64 MiB; pacs_64.npz is 63 MB).

Keeps, per class, ``--train-per-class`` training and ``--test-per-class``
test images drawn at random (seeded) in proportion to the domains, as uint8
in a compressed npz with the original arrays' names and metadata. Speed
and memory do not depend on which images are kept; the sizes are what the
timed settings need (256 real images per group per step).

    python bench/gpu/prepare_data.py $DATA/pacs_64.npz .data/pacs64_gpu.npz
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def subset(src: Path, dst: Path, train_per_class: int, test_per_class: int, seed: int = 0) -> dict:
    data = np.load(src, allow_pickle=False)
    rng = np.random.default_rng(seed)
    keep = []
    for split, per in ((0, train_per_class), (1, test_per_class)):
        for c in np.unique(data["labels"]):
            idx = np.flatnonzero((data["labels"] == c) & (data["split"] == split))
            keep.append(rng.choice(idx, size=min(per, len(idx)), replace=False))
    keep = np.sort(np.concatenate(keep))
    arrays = {k: data[k][keep] for k in ("images", "labels", "domains", "split")}
    arrays |= {k: data[k] for k in ("class_names", "domain_names")}
    dst.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(dst, **arrays)
    return {"images": len(keep), "bytes": dst.stat().st_size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    parser.add_argument("--train-per-class", type=int, default=300)
    parser.add_argument("--test-per-class", type=int, default=30)
    args = parser.parse_args()
    out = subset(args.source, args.target, args.train_per_class, args.test_per_class)
    print(f"{args.target}: {out['images']} images, {out['bytes'] / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
