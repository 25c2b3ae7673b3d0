"""Seconds per iteration and peak memory of DM, DM+CHDDL, DC, DC+CHDDL (and on request SRe2L, SRe2L+CHDDL).

Input: the size the reference code was timed on (docs/reference.md): 10 classes
of 32x32x3 images (500 per class here, random pixels: speed does not depend
on content), 256 real images per group per step, IPC 1 and 10, D = 4.
Each configuration runs in its own process so its peak RSS is its own.

    python bench/condense_speed.py                     # the whole matrix
    python bench/condense_speed.py --only dm:10:1      # base:ipc:chddl
    python bench/condense_speed.py --only dm:10:0 --only dm:10:1:one   # CHDDL with --domain-views one
    python bench/condense_speed.py --only sre2l:10:0 --only sre2l:10:1   # a 1-epoch teacher is trained first
    python bench/condense_speed.py --iterations 6 --compile on
    python bench/condense_speed.py --reference .reference --only dm:10:0   # side by side

With ``--reference DIR`` (VICO-UoE/DatasetCondensation fetched there, see
bench/reference.py) every configuration the reference has (DM IPC 1 and
10, DC IPC 1, no CHDDL) is also timed with the reference's own loop in this
run, alternating ours and the reference ``--rounds`` times, and the ratio
comes from these measurements. Without it the ratio uses the constants of
docs/reference.md, marked "(recorded)".

Prints a Markdown table (median seconds per iteration after the first); with
``--json``, one JSON object on stdout instead: per configuration, ours and the
reference's seconds per iteration and peak RSS, and the ratios (ours /
reference, CHDDL / base) of both.
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
from _tree import ROOT

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
#: reference seconds per iteration recorded on another day (docs/reference.md): the fallback without --reference
REFERENCE = {("dm", 1): 4.34, ("dm", 10): 5.30, ("dc", 1): 11.2}


def _child(args: list[str]) -> dict | None:
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        print(out.stderr[-2000:], file=sys.stderr)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def median(values: list[float]) -> float:
    return float(np.median(values))


def one(base: str, ipc: int, aware: int, iterations: int, compile_mode: str, device: str, views: str = "all") -> dict:
    """Run one configuration in this process and return its figures."""
    import torch
    from synthetic import random_workspace

    from stages.allocator import keep_freed_memory
    from stages.condense import CondenseConfig, run
    from stages.config import build
    from stages.methods import METHODS

    keep_freed_memory()  # as the CLI does
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", torch.get_num_threads())))
    with tempfile.TemporaryDirectory() as tmp:
        ws, ds, labels = random_workspace(Path(tmp))
        # speed does not depend on how well the teacher is trained: one epoch, in a process of its own (this
        # process's peak RSS is the measured stage's)
        teacher = None
        if METHODS.get(base).needs == "teacher":
            cmd = [sys.executable, "-m", "chddl_cli", "-q", "-w", str(ws.root), "--device", device]
            cmd += ["train-teacher", "--epochs", "1"]
            out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=True)
            teacher = ws.find(out.stdout.split("teacher:")[1].split()[0])
        cfg = build(
            CondenseConfig,
            {
                "base": base,
                "ipc": ipc,
                "domain_aware": bool(aware),
                "domain_views": views,
                "iterations": iterations,
                "batch_real": 256,
                "compile": compile_mode,
                "log_every": 1,
                "checkpoint_every": 10**6,
                "checkpoint_minutes": 10**6,
                "first_checkpoint_minutes": 10**6,
            },
        )
        art, _ = run(ds, labels, cfg, ws, device=torch.device(device), teacher=teacher)
        return {
            "s_per_iteration": art.metrics["s_per_iteration"],
            "peak_rss_gb": art.meta["cost"]["peak_rss_bytes"] / 2**30,
            "peak_cuda_gb": art.meta["cost"].get("peak_cuda_bytes", 0) / 2**30,
            "wall_s": art.meta["cost"]["wall_s"],
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument(
        "--compile",
        default="auto",
        choices=["auto", "on", "off"],
        help="auto: as `chddl condense` at the base's default length (DM 20,000 and DC 1,000 iterations compile)",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--only", action="append", help="base:ipc:chddl[:views], repeatable (views: --domain-views, all or one)"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--reference", type=Path, help="folder with the reference repositories (bench/reference.py)")
    parser.add_argument("--rounds", type=int, default=2, help="with --reference: ours / reference alternations")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout instead of the table")
    args = parser.parse_args()
    if args.child:
        base, ipc, aware, views = args.child.split(":")
        print(json.dumps(one(base, int(ipc), int(aware), args.iterations, args.compile, args.device, views)))
        return
    if any(len(o.split(":")) not in (3, 4) or o.split(":")[3:] not in ([], ["all"], ["one"]) for o in args.only or []):
        parser.error("--only takes base:ipc:chddl[:views], e.g. dm:10:1 or dm:10:1:one")
    todo = [_configuration(o) for o in args.only] if args.only else [(*m, "all") for m in MATRIX]
    import torch

    from stages.condense import compiles_at
    from stages.methods import METHODS

    threads = int(os.environ.get("BENCH_THREADS", torch.get_num_threads()))
    print(f"torch {torch.__version__}, {threads} threads, {args.iterations} iterations per run", file=sys.stderr)
    rows, refs = {}, {}
    for base, ipc, aware, views in todo:
        ours_args = [__file__, "--child", f"{base}:{ipc}:{aware}:{views}", "--iterations", str(args.iterations)]
        compiled = args.compile == "on" or (
            args.compile == "auto" and compiles_at(base, METHODS.get(base).defaults["iterations"])
        )
        ours_args += ["--compile", "on" if compiled else "off", "--device", args.device]
        side_by_side = args.reference is not None and not aware and (base, ipc) in REFERENCE
        ours, theirs = [], []
        for _ in range(args.rounds if side_by_side else 1):
            r = _child(ours_args)
            if r is not None:
                ours.append(r)
            if side_by_side:
                ref_args = [str(ROOT / "bench" / "reference.py"), "--reference", str(args.reference)]
                ref_args += ["--method", base, "--ipc", str(ipc), "--iterations", str(args.iterations)]
                ref_args += ["--threads", str(threads)]
                t = _child(ref_args)
                if t is not None:
                    theirs.append(t)
        if not ours:
            continue
        rows[(base, ipc, aware, views)] = {
            "s_per_iteration": median([r["s_per_iteration"] for r in ours]),
            "peak_rss_gb": max(r["peak_rss_gb"] for r in ours),
            "peak_cuda_gb": max(r["peak_cuda_gb"] for r in ours),
            "runs": [r["s_per_iteration"] for r in ours],
            "compiled": compiled,
        }
        if theirs:
            refs[(base, ipc)] = {
                "s_per_iteration": median([t["s_per_iteration"] for t in theirs]),
                "peak_rss_gb": max(t["peak_rss_gb"] for t in theirs),
                "runs": [t["s_per_iteration"] for t in theirs],
            }
        r = rows[(base, ipc, aware, views)]
        name = f"{base} ipc {ipc} chddl {aware}{'' if views == 'all' else ' ' + views}"
        line = f"{name}: {r['runs']} s/it, peak RSS {r['peak_rss_gb']:.2f} GB"
        if (base, ipc) in refs and not aware:
            line += f"; reference {refs[(base, ipc)]['runs']} s/it, peak RSS {refs[(base, ipc)]['peak_rss_gb']:.2f} GB"
        print(line, file=sys.stderr, flush=True)
    records = [_record(key, r, rows, refs) for key, r in rows.items()]
    if args.json:
        print(json.dumps({"threads": threads, "iterations": args.iterations, "device": args.device, "runs": records}))
        return
    print(
        "\n| run | s / iteration | reference s / it | ours / reference | peak RSS | reference peak RSS | peak CUDA "
        "| CHDDL / base (time, memory) |\n|---|---|---|---|---|---|---|---|"
    )
    for rec in records:
        ref, ratio, over = rec["reference"], rec["ours_over_reference"], rec["chddl_over_base"]
        mark = " (recorded)" if ref and ref["source"] == "recorded" else ""
        ref_s = f"{ref['s_per_iteration']:.2f}{mark}" if ref else "-"
        ref_rss = f"{ref['peak_rss_gb']:.2f} GB" if ref and ref["peak_rss_gb"] is not None else "-"
        ratio_cell = f"{ratio['time']:.2f}x{mark}" if ratio else "-"
        over_cell = f"{over['time']:.2f}x, {over['memory']:.2f}x" if over else "-"
        print(
            f"| {rec['run']} | {rec['s_per_iteration']:.2f} | {ref_s} | {ratio_cell} | {rec['peak_rss_gb']:.2f} GB | "
            f"{ref_rss} | {rec['peak_cuda_gb']:.2f} GB | {over_cell} |"
        )


def _configuration(text: str) -> tuple:
    """(base, ipc, chddl, views) of an ``--only`` value."""
    parts = text.split(":")
    return parts[0], int(parts[1]), int(parts[2]), parts[3] if len(parts) == 4 else "all"


def _record(key: tuple, r: dict, rows: dict, refs: dict) -> dict:
    """One configuration's figures, with the reference's (measured in this run, else recorded) and the ratios."""
    base, ipc, aware, views = key
    measured = refs.get((base, ipc)) if not aware else None
    recorded = REFERENCE.get((base, ipc)) if not aware else None
    if measured:
        ref = {"s_per_iteration": measured["s_per_iteration"], "peak_rss_gb": measured["peak_rss_gb"]}
        ref |= {"source": "measured", "runs": measured["runs"]}
    elif recorded:
        ref = {"s_per_iteration": recorded, "peak_rss_gb": None, "source": "recorded"}
    else:
        ref = None
    plain = rows.get((base, ipc, 0, "all"))
    one_domain = " (one domain per step)" if aware and views == "one" else ""
    return {
        "run": f"{base.upper()}{'+CHDDL' if aware else ''}{one_domain} IPC {ipc}"
        f"{' (compiled)' if r['compiled'] else ''}",
        "base": base,
        "ipc": ipc,
        "chddl": bool(aware),
        "domain_views": views if aware else None,
        "compiled": r["compiled"],
        "s_per_iteration": r["s_per_iteration"],
        "runs": r["runs"],
        "peak_rss_gb": r["peak_rss_gb"],
        "peak_cuda_gb": r["peak_cuda_gb"],
        "reference": ref,
        "ours_over_reference": {
            "time": r["s_per_iteration"] / ref["s_per_iteration"],
            "memory": r["peak_rss_gb"] / ref["peak_rss_gb"] if ref["peak_rss_gb"] else None,
        }
        if ref
        else None,
        "chddl_over_base": {
            "time": r["s_per_iteration"] / plain["s_per_iteration"],
            "memory": r["peak_rss_gb"] / plain["peak_rss_gb"],
        }
        if aware and plain
        else None,
    }


if __name__ == "__main__":
    main()
