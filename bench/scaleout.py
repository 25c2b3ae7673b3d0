"""One DM IPC 10 condensation (with ``--chddl``: DM + CHDDL) in one process and split by class across
torchrun ranks.

Input: 10 classes x 500 random 32x32x3 images (the shape the reference was timed on), 256 real
images per class per step. Runs, each from the command line as a user would, on one labelled workspace:

- 1 process x 1 thread;
- K ranks x 1 thread (``torchrun --standalone --nproc-per-node K``);
- 1 process x K threads (what the same cores give without torchrun).

Prints seconds per iteration (median after the first), wall time of the stage, peak RSS per rank,
the ratio to the single-thread process, and whether the images equal the single process's.

    python bench/scaleout.py                       # K = 2, 10 iterations
    python bench/scaleout.py --ranks 4 --iterations 20 --json
    python bench/scaleout.py --chddl               # DM + CHDDL (FFT pseudo-domains of the random images)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from _tree import ROOT


def _condense(ws: Path, iterations: int, threads: int, ranks: int, chddl: bool, batch_real: int) -> dict:
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks)] if ranks > 1 else []
    cmd = [sys.executable, *launcher, "-m", "chddl_cli", "-q", "-w", str(ws), "--threads", str(threads), "condense"]
    cmd += ["--base", "dm", "--ipc", "10", "--domain-aware" if chddl else "--no-domain-aware"]
    cmd += ["--iterations", str(iterations), "--compile", "off", "--batch-real", str(batch_real)]
    out = subprocess.run(
        [*cmd, "--json"],
        env=os.environ | {"OMP_NUM_THREADS": str(threads)},
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    if out.returncode != 0:
        raise SystemExit(out.stderr[-3000:])
    return json.loads(out.stdout)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--chddl", action="store_true", help="DM + CHDDL instead of DM")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--per-class", type=int, default=500, help="training images per class (and 1/5 as many for test)")
    p.add_argument("--size", type=int, default=32, help="image side in pixels")
    p.add_argument("--batch-real", type=int, default=256, help="real images per class per step")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = p.parse_args()
    from safetensors.torch import load_file

    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        npz = Path(tmp) / "data.npz"
        c, per = args.classes, args.per_class
        n = c * (per + per // 5)
        split = (np.arange(n) // c % 6 == 5).astype(np.int64)  # per train + per / 5 test per class
        images = rng.integers(0, 255, (n, args.size, args.size, 3), dtype=np.uint8)
        np.savez(npz, images=images, labels=np.arange(n) % c, split=split)
        del images
        base = Path(tmp) / "base"
        subprocess.run(
            [sys.executable, "-m", "chddl_cli", "-q", "-w", str(base), "label", str(npz)], check=True, cwd=ROOT
        )
        runs = {}
        for name, threads, ranks in (
            ("1 process x 1 thread", 1, 1),
            (f"{args.ranks} ranks x 1 thread", 1, args.ranks),
            (f"1 process x {args.ranks} threads", args.ranks, 1),
        ):
            ws = Path(tmp) / name.replace(" ", "_")
            shutil.copytree(base, ws)
            r = _condense(ws, args.iterations, threads, ranks, args.chddl, args.batch_real)
            cost = r["cost"]
            runs[name] = {
                "s_per_iteration": r["metrics"]["s_per_iteration"],
                "wall_s": cost["wall_s"],
                "peak_rss_gb_per_rank": [round(c["peak_rss_bytes"] / 2**30, 2) for c in cost.get("per_rank", [cost])],
                "images": load_file(str(Path(r["artifact"]) / "tensors.safetensors"))["images"],
                "name": r["name"],
            }
            print(f"{name}: {runs[name]['s_per_iteration']} s/it", file=sys.stderr, flush=True)
    single = runs["1 process x 1 thread"]
    result = {
        "iterations": args.iterations,
        "chddl": args.chddl,
        "data": f"{args.classes} classes x {args.per_class} train images at {args.size} px",
        "cores": len(os.sched_getaffinity(0)),
        "runs": {},
    }
    for name, r in runs.items():
        result["runs"][name] = {
            "s_per_iteration": r["s_per_iteration"],
            "wall_s": r["wall_s"],
            "peak_rss_gb_per_rank": r["peak_rss_gb_per_rank"],
            "time_ratio": round(r["s_per_iteration"] / single["s_per_iteration"], 3),
            "same_artifact": r["name"] == single["name"],
            "max_image_difference": float((r["images"] - single["images"]).abs().max()),
        }
    if args.json:
        print(json.dumps(result))
        return
    print("| run | s / iteration | stage wall s | peak RSS per rank GB | time / 1x1 | same set (max difference) |")
    print("|---|---:|---:|---|---:|---|")
    for name, r in result["runs"].items():
        print(
            f"| {name} | {r['s_per_iteration']:.3f} | {r['wall_s']:.1f} | {r['peak_rss_gb_per_rank']} | "
            f"{r['time_ratio']:.2f}x | {r['same_artifact']} ({r['max_image_difference']:.1e}) |"
        )


if __name__ == "__main__":
    main()
