"""Peak memory of DM and DM + CHDDL on a Tiny-ImageNet-shaped input.

200 classes x 300 random 64 px images (250 train and 50 test per class; memory does not depend on content;
``--classes``, ``--per-class`` and ``--size`` change the shape),
random pseudo-domain labels (D = 4), IPC 10, 32 real images per group, eager (compiling adds its own memory and
is not what is compared here). Each configuration runs in its own process, so its peak RSS is its own; the input
is generated once and shared.

Two iterations, the state checked after each: the second iteration holds what every later iteration of a long
run holds, the optimiser's momenta included (a first iteration alone has none and reads lower, ``--iterations
1``). The state to roll back to is written as the checkpoint at each check here, as in a user's run of this
size, not copied in memory (``stages/methods/loop.py``: SPILL_BYTES, SPILL_BUDGET).

    python bench/tiny_memory.py                      # dm, chddl (the paper's per-channel masks), shared masks
    python bench/tiny_memory.py --only dm --only chddl --json

Prints a Markdown table; with ``--json``, one JSON object: per configuration, peak RSS (GiB), wall seconds and
the ratio to DM's peak.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from _tree import ROOT

CONFIGURATIONS = {
    "dm": {"domain_aware": False},
    "chddl": {"domain_aware": True},
    "shared": {"domain_aware": True, "mask_channels": "shared"},
}


def setup(tmp: Path, classes: int, per_class: int, size: int) -> None:
    """Generate the input and its labels into a workspace in ``tmp`` (a process of its own: its peak is not a run's)."""
    from synthetic import random_workspace

    test = per_class // 6
    random_workspace(tmp, train=classes * (per_class - test), test=classes * test, size=size, classes=classes)


def one(name: str, tmp: Path, iterations: int) -> dict:
    """Run one configuration in this process on the workspace in ``tmp`` and return its figures."""
    import torch

    from stages.allocator import keep_freed_memory
    from stages.artifacts import Workspace
    from stages.condense import CondenseConfig, run
    from stages.config import build
    from stages.data.dataset import load_dataset
    from stages.label import load_labels

    keep_freed_memory()  # as the CLI does
    ws = Workspace(tmp / "ws")
    ds = load_dataset(ws.latest("dataset"))
    labels = load_labels(ws.latest("labels"), ds)
    settings = {"base": "dm", "ipc": 10, "iterations": iterations, "batch_real": 32, "compile": "off", "log_every": 1}
    settings |= {"checkpoint_every": 10**6, "checkpoint_minutes": 10**6, "first_checkpoint_minutes": 10**6}
    art, _ = run(ds, labels, build(CondenseConfig, settings | CONFIGURATIONS[name]), ws, device=torch.device("cpu"))
    cost = art.meta["cost"]
    return {"peak_rss_gib": cost["peak_rss_bytes"] / 2**30, "wall_s": cost["wall_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", choices=sorted(CONFIGURATIONS), help="a configuration (repeat)")
    parser.add_argument("--iterations", type=int, default=2, help="2: a long run's steady state (docstring)")
    parser.add_argument("--classes", type=int, default=200)
    parser.add_argument("--per-class", type=int, default=300, help="images per class, a sixth of them test")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout instead of the table")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--tmp", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if min(args.classes, args.iterations) < 1 or args.size < 16:
        parser.error("--classes and --iterations must be at least 1 and --size at least 16")
    if args.per_class - args.per_class // 6 < 10:
        parser.error("--per-class must leave IPC 10 training images per class (a sixth are test): use 12 or more")
    if args.child == "setup":
        setup(Path(args.tmp), args.classes, args.per_class, args.size)
        return
    if args.child:
        print(json.dumps(one(args.child, Path(args.tmp), args.iterations)))
        return
    names = args.only or list(CONFIGURATIONS)
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        shape = ["--classes", str(args.classes), "--per-class", str(args.per_class), "--size", str(args.size)]
        subprocess.run([sys.executable, __file__, "--child", "setup", "--tmp", tmp, *shape], check=True, cwd=ROOT)
        for name in names:
            cmd = [sys.executable, __file__, "--child", name, "--tmp", tmp, "--iterations", str(args.iterations)]
            out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            if out.returncode != 0:
                sys.exit(f"{name} failed:\n{out.stderr[-2000:]}")
            rows[name] = json.loads(out.stdout.strip().splitlines()[-1])
    base = rows.get("dm")
    for r in rows.values():
        r["peak_vs_dm"] = round(r["peak_rss_gib"] / base["peak_rss_gib"], 3) if base else None
    if args.json:
        shape = f"{args.classes} classes x {args.per_class} random {args.size} px images, D = 4, IPC 10"
        print(json.dumps({"input": shape, "runs": rows}))
        return
    print("| run | peak RSS | / DM | wall s |\n|---|---:|---:|---:|")
    for name, r in rows.items():
        ratio = f"{r['peak_vs_dm']:.2f}x" if r["peak_vs_dm"] else "-"
        print(f"| {name} | {r['peak_rss_gib']:.2f} GiB | {ratio} | {r['wall_s']:.0f} |")


if __name__ == "__main__":
    main()
