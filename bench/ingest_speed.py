"""Ingest speed: chddl's folder reader against torchvision's ImageFolder + DataLoader, same files, same run.

A JPEG tree is generated (``--images`` files of ``--source-px`` pixels in ``--domains`` x ``--classes``
folders, smooth content so the files compress like photographs), then each reader decodes every file and
resizes it to ``--size`` pixels into one uint8 tensor, in its own process (so its peak RSS is its own),
alternating the two ``--rounds`` times:

- chddl: ``stages.data.folder.read_folder`` (its defaults: one thread per core, JPEG draft decoding);
- torchvision: ``ImageFolder`` with ``Resize((size, size), LANCZOS)`` + ``PILToTensor``, through
  ``DataLoader(batch_size=256, num_workers=--torch-workers)``, batches concatenated.

    python bench/ingest_speed.py                          # 3,000 images of 256 px -> 64 px
    python bench/ingest_speed.py --images 20000 --json    # one JSON object on stdout

``--scale N`` instead measures the peak RSS of ``chddl label`` and a short DM + CHDDL ``condense``
(``--scale-iterations``, default 2) on a generated N-image 64 px .npz (4 domains, 100 classes), each
in its own process.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _tree import ROOT


def make_tree(root: Path, images: int, source_px: int, domains: int, classes: int, seed: int = 0) -> Path:
    """``images`` JPEGs at ``root/<domain>/<class>/``: upsampled random 16 px patterns (photo-like sizes)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(images):
        d, c = i % domains, (i // domains) % classes
        folder = root / f"domain{d}" / f"class{c:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        small = Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))
        small.resize((source_px, source_px), Image.Resampling.BICUBIC).save(folder / f"{i:06d}.jpg", quality=90)
    return root


def _chddl(tree: Path, size: int) -> tuple[int, float]:
    from stages.data.folder import read_folder

    start = time.perf_counter()  # imports excluded on both sides
    return int(read_folder(tree, size).images.shape[0]), time.perf_counter() - start


def _torchvision(tree: Path, size: int, workers: int) -> tuple[int, float]:
    import torch
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    start = time.perf_counter()
    tf = transforms.Compose(
        [
            transforms.Lambda(lambda im: im.convert("RGB")),
            transforms.Resize((size, size), interpolation=transforms.InterpolationMode.LANCZOS),
            transforms.PILToTensor(),
        ]
    )
    loader = DataLoader(datasets.ImageFolder(str(tree), transform=tf), batch_size=256, num_workers=workers)
    return int(torch.cat([x for x, _ in loader]).shape[0]), time.perf_counter() - start


def _child_main(args: argparse.Namespace) -> None:
    n, seconds = (
        _chddl(args.tree, args.size) if args.child == "chddl" else _torchvision(args.tree, args.size, args.workers)
    )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # the largest child (a worker)
    print(json.dumps({"images": n, "seconds": seconds, "peak_rss_bytes": peak, "worker_peak_rss_bytes": children}))


def _run_child(kind: str, tree: Path, size: int, workers: int) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--tree", str(tree), "--size", str(size)]
    cmd += ["--torch-workers", str(workers)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def speed(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        tree = (
            Path(args.tree)
            if args.tree
            else make_tree(Path(tmp) / "tree", args.images, args.source_px, args.domains, args.classes)
        )
        runs: dict[str, list[dict]] = {"chddl": [], "torchvision": []}
        for _ in range(args.rounds):
            for kind in runs:
                runs[kind].append(_run_child(kind, tree, args.size, args.torch_workers))
    out = {}
    for kind, rs in runs.items():
        seconds = statistics.median(r["seconds"] for r in rs)
        out[kind] = {
            "seconds": round(seconds, 3),
            "images_per_s": round(rs[0]["images"] / seconds, 1),
            "peak_rss_gb": round(max(r["peak_rss_bytes"] for r in rs) / 2**30, 3),
            "worker_peak_rss_gb": round(max(r["worker_peak_rss_bytes"] for r in rs) / 2**30, 3),
            "images": rs[0]["images"],
        }
    out["time_ratio"] = round(out["chddl"]["seconds"] / out["torchvision"]["seconds"], 3)
    out["settings"] = {
        "images": args.images,
        "source_px": args.source_px,
        "size": args.size,
        "rounds": args.rounds,
        "torch_workers": args.torch_workers,
        "cores": len(os.sched_getaffinity(0)),
    }
    return out


def scale(args: argparse.Namespace) -> dict:
    """Peak RSS of label and a short DM condense on an N-image 64 px dataset."""
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        n = args.scale
        npz = Path(tmp) / "large.npz"
        images = np.empty((n, 64, 64, 3), dtype=np.uint8)
        for start in range(0, n, 10000):  # smooth-ish content, generated in blocks to bound this process's memory
            block = rng.integers(0, 255, (min(10000, n - start), 8, 8, 3), dtype=np.uint8)
            images[start : start + len(block)] = block.repeat(8, axis=1).repeat(8, axis=2)
        np.savez(npz, images=images, labels=np.arange(n) % 100, domains=(np.arange(n) // 100) % 4)
        del images
        ws = Path(tmp) / "ws"
        base = [sys.executable, "-m", "chddl_cli", "-q", "-w", str(ws)]
        out = {"images": n}
        short = ["--iterations", str(args.scale_iterations), "--compile", "off", "--json"]
        for stage, cmd in (
            ("label", [*base, "label", str(npz), "--size", "64", "--json"]),
            ("condense", [*base, "condense", "--ipc", "10", *short]),
        ):
            start = time.perf_counter()
            result = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
            payload = json.loads(result.stdout)
            cost = payload["cost"]
            out[stage] = {
                "wall_s": round(time.perf_counter() - start, 1),
                "peak_rss_gb": round(cost["peak_rss_bytes"] / 2**30, 2),
            }
            if stage == "label":
                out["dataset_peak_rss_gb"] = round(payload["dataset"]["cost"]["peak_rss_bytes"] / 2**30, 2)
        out["dataset_gb"] = round(n * 3 * 64 * 64 / 2**30, 2)
        return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=3000)
    p.add_argument("--source-px", type=int, default=256)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--domains", type=int, default=4)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--torch-workers", type=int, default=2, help="DataLoader workers of the torchvision side")
    p.add_argument("--tree", type=Path, help="an existing image tree instead of a generated one")
    p.add_argument("--scale", type=int, help="measure label + condense peak RSS on this many 64 px images instead")
    p.add_argument("--scale-iterations", type=int, default=2, help="with --scale: condense iterations (peak by then)")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.add_argument("--child", choices=["chddl", "torchvision"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        args.workers = args.torch_workers
        _child_main(args)
        return
    result = scale(args) if args.scale else speed(args)
    if args.json:
        print(json.dumps(result))
    elif args.scale:
        print(json.dumps(result, indent=2))
    else:
        print("| reader | seconds | images/s | peak RSS GB (main) | peak RSS GB (largest child) |")
        print("|---|---:|---:|---:|---:|")
        for kind in ("chddl", "torchvision"):
            r = result[kind]
            print(f"| {kind} | {r['seconds']} | {r['images_per_s']} | {r['peak_rss_gb']} | {r['worker_peak_rss_gb']} |")
        print(f"\nchddl / torchvision time: {result['time_ratio']}x ({result['settings']})")


if __name__ == "__main__":
    main()
