"""Evaluation throughput (models x epochs per second): one process with all
threads, the runs split across torchrun processes with one thread each,
and all runs trained at once with vmap (``--parallel``).

Input: a random-real training set of 10 classes x IPC (10 or 1: 100 or 10
images of 32 px), ConvNet, the reference protocol (batch 256, DSA), tested
on 1,000 images.

    python bench/eval_speed.py [--runs 4] [--epochs 50] [--procs 2] [--ipc 10]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _tree import ROOT


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--ipc", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        data = Path(tmp) / "bench.npz"
        np.savez(
            data,
            images=rng.integers(0, 256, (6000, 32, 32, 3), dtype=np.uint8),
            labels=np.arange(6000) % 10,
            split=(np.arange(6000) >= 5000).astype(np.int64),
        )
        cli = [sys.executable, "-m", "chddl_cli", "-q", "-w", str(Path(tmp) / "ws")]
        subprocess.run([*cli, "label", str(data)], check=True, capture_output=True, cwd=ROOT)
        evaluate = [
            "evaluate",
            "--baseline",
            "random",
            "--ipc",
            str(args.ipc),
            "--runs",
            str(args.runs),
            "--epochs",
            str(args.epochs),
            "--force",
        ]
        threads = os.cpu_count() or 1
        rows = []
        for name, cmd, env in (
            (f"1 process x {threads} threads", [*cli, *evaluate], {"OMP_NUM_THREADS": str(threads)}),
            (
                f"torchrun {args.procs} processes x {max(1, threads // args.procs)} thread(s)",
                [
                    sys.executable,
                    "-m",
                    "torch.distributed.run",
                    "--standalone",
                    "--nproc-per-node",
                    str(args.procs),
                    "-m",
                    "chddl_cli",
                    "-q",
                    "-w",
                    str(Path(tmp) / "ws"),
                    *evaluate,
                ],
                {"OMP_NUM_THREADS": str(max(1, threads // args.procs))},
            ),
            (
                f"1 process, {args.runs} runs at once (vmap)",
                [*cli, *evaluate, "--parallel", str(args.runs)],
                {"OMP_NUM_THREADS": str(threads)},
            ),
        ):
            start = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT, env=os.environ | env)
            wall = time.perf_counter() - start
            rows.append((name, wall, args.runs * args.epochs / wall))
    print(f"\n{args.runs} runs x {args.epochs} epochs, ConvNet, {10 * args.ipc} training images, 1,000 test images\n")
    print("| setup | wall s (incl. start-up) | models x epochs / s |\n|---|---|---|")
    for name, wall, rate in rows:
        print(f"| {name} | {wall:.1f} | {rate:.2f} |")


if __name__ == "__main__":
    main()
