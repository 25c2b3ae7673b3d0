"""Seconds per expert epoch, and seconds and peak memory per MTT iteration.

Input as the reference was timed (REFERENCE.md): 10 classes of 32x32x3
images (5,000 training images), MTT with syn_steps 50 and expert_epochs 2,
IPC 1 and 10, with and without CHDDL (D = 4), with and without
checkpointing of the student steps. Each MTT configuration runs in its own
process, so its peak RSS is its own. The fourth field sets the domain
student's steps (0: syn_steps, as DESIGN.md).

    python bench/mtt_speed.py                   # everything
    python bench/mtt_speed.py --only 10:1:0:0   # ipc:chddl:checkpoint:domain_syn_steps
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MATRIX = [
    (1, 0, 0, 0),
    (1, 1, 0, 0),
    (1, 1, 0, 12),
    (10, 0, 0, 0),
    (10, 1, 0, 0),
    (10, 1, 0, 12),
    (10, 0, 1, 0),
    (10, 1, 1, 0),
]
REFERENCE = {1: (7.50, 3.8), 10: (73.6, 19.2)}  # s/it, peak GB (syn_steps 50, expert_epochs 2)


def _setup(tmp: Path):
    from stages.artifacts import Workspace
    from stages.config import build
    from stages.data.dataset import load_dataset
    from stages.data.ingest import DatasetConfig, ingest
    from stages.label import LabelConfig, load_labels
    from stages.label import run as label_run

    rng = np.random.default_rng(0)
    path = tmp / "bench.npz"
    np.savez(
        path,
        images=rng.integers(0, 256, (5100, 32, 32, 3), dtype=np.uint8),
        labels=np.arange(5100) % 10,
        split=(np.arange(5100) >= 5000).astype(np.int64),
    )
    ws = Workspace(tmp / "ws")
    ds = load_dataset(ingest(str(path), build(DatasetConfig), ws)[0])
    labels = load_labels(label_run(ds, build(LabelConfig, {"labeler": "random"}), ws)[0], ds)
    return ws, ds, labels


def experts_child(tmp: Path) -> dict:
    from stages.config import build
    from stages.pretrain_experts import ExpertsConfig, run

    ws, ds, labels = _setup(tmp)
    art, _ = run(ds, labels, build(ExpertsConfig, {"num_experts": 1, "epochs": 3}), ws)
    # 1 class expert on 5,000 images + 4 domain experts on 1,250 each: 3 epochs x 2 x 5,000 images seen
    return {
        "s_per_epoch_5000": art.meta["cost"]["wall_s"] / 6,
        "peak_rss_gb": art.meta["cost"]["peak_rss_bytes"] / 2**30,
    }


def mtt_child(tmp: Path, ipc: int, aware: int, ck: int, dss: int, iterations: int) -> dict:
    from stages.condense import CondenseConfig, run
    from stages.config import build
    from stages.inputs import resolve

    ws, ds, labels = _setup(tmp)
    experts = resolve(ws, "experts")
    cfg = build(
        CondenseConfig,
        {
            "base": "mtt",
            "ipc": ipc,
            "domain_aware": bool(aware),
            "iterations": iterations,
            "syn_steps": 50,
            "expert_epochs": 2,
            "max_start_epoch": 1,
            "lr_img": 1000.0,
            "checkpoint_student": bool(ck),
            "domain_syn_steps": dss or None,
            "log_every": 1,
            "checkpoint_every": 10**6,
            "checkpoint_minutes": 10**6,
            "first_checkpoint_minutes": 10**6,
        },
    )
    art, _ = run(ds, labels, cfg, ws, experts=experts)
    return {
        "s_per_iteration": art.metrics["s_per_iteration"],
        "peak_rss_gb": art.meta["cost"]["peak_rss_bytes"] / 2**30,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--only", action="append")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--tmp", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "experts":
        print(json.dumps(experts_child(Path(args.tmp))))
        return
    if args.child:
        ipc, aware, ck, dss = map(int, args.child.split(":"))
        print(json.dumps(mtt_child(Path(args.tmp), ipc, aware, ck, dss, args.iterations)))
        return
    if any(len(o.split(":")) != 4 or not o.replace(":", "").isdigit() for o in args.only or []):
        parser.error("--only takes ipc:chddl:checkpoint:domain_syn_steps as integers, e.g. 10:1:0:0")
    todo = [tuple(map(int, o.split(":"))) for o in args.only] if args.only else MATRIX
    with tempfile.TemporaryDirectory() as tmp:

        def child(name: str) -> dict:
            out = subprocess.run(
                [sys.executable, __file__, "--child", name, "--tmp", tmp, "--iterations", str(args.iterations)],
                capture_output=True,
                text=True,
                cwd=ROOT,
            )
            if out.returncode != 0:
                raise SystemExit(out.stderr[-3000:])
            return json.loads(out.stdout.strip().splitlines()[-1])

        e = child("experts")
        print(
            f"expert training: {e['s_per_epoch_5000']:.2f} s per epoch of 5,000 images (reference 20.6), "
            f"peak RSS {e['peak_rss_gb']:.2f} GB",
            flush=True,
        )
        print("\n| run | s / iteration | peak RSS | reference s/it, peak | CHDDL / base |\n|---|---|---|---|---|")
        rows = {}
        for ipc, aware, ck, dss in todo:
            r = rows[(ipc, aware, ck, dss)] = child(f"{ipc}:{aware}:{ck}:{dss}")
            base = rows.get((ipc, 0, ck, 0))
            over = f"{r['s_per_iteration'] / base['s_per_iteration']:.2f}x" if aware and base else "-"
            ref = REFERENCE[ipc]
            name = (
                f"MTT{'+CHDDL' if aware else ''} IPC {ipc}{' (checkpointed)' if ck else ''}"
                f"{f' (domain student {dss} steps)' if dss else ''}"
            )
            print(
                f"| {name} | {r['s_per_iteration']:.2f} | {r['peak_rss_gb']:.2f} GB | {ref[0]} s, {ref[1]} GB | "
                f"{over} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
