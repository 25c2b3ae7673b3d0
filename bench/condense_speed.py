"""Seconds per iteration and peak memory of DM, DM+CHDDL, DC, DC+CHDDL.

Input: the size the reference code was timed on (REFERENCE.md): 10 classes
of 32x32x3 images (500 per class here, random pixels: speed does not depend
on content), 256 real images per group per step, IPC 1 and 10, D = 4.
Each configuration runs in its own process so its peak RSS is its own.

    python bench/condense_speed.py                     # the whole matrix
    python bench/condense_speed.py --only dm:10:1      # base:ipc:chddl
    python bench/condense_speed.py --iterations 6 --compile on

Prints a Markdown table (median seconds per iteration after the first).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MATRIX = [
    ("dm", 1, 0),
    ("dm", 1, 1),
    ("dm", 10, 0),
    ("dm", 10, 1),
    ("dc", 1, 0),
    ("dc", 1, 1),
    ("dc", 10, 0),
    ("dc", 10, 1),
]
#: reference seconds per iteration on this machine type (REFERENCE.md)
REFERENCE = {("dm", 1): 4.34, ("dm", 10): 5.30, ("dc", 1): 11.2}


def one(base: str, ipc: int, aware: int, iterations: int, compile_mode: str, device: str) -> dict:
    """Run one configuration in this process and return its figures."""
    import torch

    from stages.artifacts import Workspace
    from stages.condense import CondenseConfig, run
    from stages.config import build
    from stages.data.dataset import load_dataset
    from stages.data.ingest import DatasetConfig, ingest
    from stages.label import LabelConfig, load_labels
    from stages.label import run as label_run

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", torch.get_num_threads())))
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        path = Path(tmp) / "bench.npz"
        np.savez(
            path,
            images=rng.integers(0, 256, (5000, 32, 32, 3), dtype=np.uint8),
            labels=np.arange(5000) % 10,
            split=np.zeros(5000, dtype=np.int64),
        )
        ws = Workspace(Path(tmp) / "ws")
        ds = load_dataset(ingest(str(path), build(DatasetConfig), ws)[0])
        labels = load_labels(label_run(ds, build(LabelConfig, {"labeler": "random"}), ws)[0], ds)
        cfg = build(
            CondenseConfig,
            {
                "base": base,
                "ipc": ipc,
                "domain_aware": bool(aware),
                "iterations": iterations,
                "batch_real": 256,
                "compile": compile_mode,
                "log_every": 1,
                "checkpoint_every": 10**6,
                "checkpoint_minutes": 10**6,
                "first_checkpoint_minutes": 10**6,
            },
        )
        art, _ = run(ds, labels, cfg, ws, device=torch.device(device))
        return {
            "s_per_iteration": art.metrics["s_per_iteration"],
            "peak_rss_gb": art.meta["cost"]["peak_rss_bytes"] / 2**30,
            "peak_cuda_gb": art.meta["cost"].get("peak_cuda_bytes", 0) / 2**30,
            "wall_s": art.meta["cost"]["wall_s"],
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--compile", default="off", choices=["on", "off"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", action="append", help="base:ipc:chddl, repeatable")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        base, ipc, aware = args.child.split(":")
        print(json.dumps(one(base, int(ipc), int(aware), args.iterations, args.compile, args.device)))
        return
    if any(len(o.split(":")) != 3 for o in args.only or []):
        parser.error("--only takes base:ipc:chddl, e.g. dm:10:1")
    todo = [tuple(int(x) if x.isdigit() else x for x in o.split(":")) for o in args.only] if args.only else MATRIX
    rows = {}
    for base, ipc, aware in todo:
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                f"{base}:{ipc}:{aware}",
                "--iterations",
                str(args.iterations),
                "--compile",
                args.compile,
                "--device",
                args.device,
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        if out.returncode != 0:
            print(out.stderr[-2000:], file=sys.stderr)
            continue
        rows[(base, ipc, aware)] = json.loads(out.stdout.strip().splitlines()[-1])
        r = rows[(base, ipc, aware)]
        print(
            f"{base} ipc {ipc} chddl {aware}: {r['s_per_iteration']:.3f} s/it, peak RSS {r['peak_rss_gb']:.2f} GB",
            file=sys.stderr,
            flush=True,
        )
    print("\n| run | s / iteration | vs reference | peak RSS | peak CUDA | CHDDL / base |\n|---|---|---|---|---|---|")
    for (base, ipc, aware), r in rows.items():
        ref = REFERENCE.get((base, ipc))
        ratio = f"{r['s_per_iteration'] / ref:.2f}x of {ref}" if ref and not aware else "-"
        plain = rows.get((base, ipc, 0))
        over = f"{r['s_per_iteration'] / plain['s_per_iteration']:.2f}x" if aware and plain else "-"
        name = f"{base.upper()}{'+CHDDL' if aware else ''} IPC {ipc}"
        print(
            f"| {name} | {r['s_per_iteration']:.2f} | {ratio} | {r['peak_rss_gb']:.2f} GB | {r['peak_cuda_gb']:.2f} "
            f"GB | {over} |"
        )


if __name__ == "__main__":
    main()
