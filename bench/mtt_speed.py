"""Seconds per expert epoch, and seconds and peak memory per MTT iteration.

Input as the reference was timed (docs/reference.md): 10 classes of 32x32x3
images (5,000 training images), MTT with syn_steps 50 and expert_epochs 2,
IPC 1 and 10, with and without CHDDL (D = 4), with and without
checkpointing of the student steps (without, a compiled student keeps each
step's residuals). Each MTT configuration runs in its own process, so its
peak RSS is its own, and is computed afresh (never served from the cache of
an earlier configuration or round). The fourth field sets the domain
student's steps (0: the default, ceil(syn_steps / D); 50 for the earlier default).

    python bench/mtt_speed.py                   # everything
    python bench/mtt_speed.py --only 10:1:0:0   # ipc:chddl:checkpoint:domain_syn_steps
    python bench/mtt_speed.py --reference .reference --only 10:0:1:0   # side by side with distill.py's loop
    python bench/mtt_speed.py --base datm --only 10:0:1:0   # DATM's iteration on the same input
    python bench/mtt_speed.py --compile off --only 10:0:1:0   # the eager student (auto: compiled, as condense)

With ``--reference DIR`` (GeorgeCazenavette/mtt-distillation fetched there,
see bench/reference.py) each configuration without CHDDL is also timed with
the reference's own iteration in the same run, alternating, and the ratio
comes from these; without it the figures of docs/reference.md (marked
"recorded") stand in.

``--json`` prints one JSON object on stdout instead of the table: the expert
timing and, per configuration, ours and the reference's seconds per iteration
and peak RSS, and the ratios (ours / reference, CHDDL / base) of both.
"""

from __future__ import annotations

import argparse
import functools
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from _tree import ROOT

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
#: recorded on another day (docs/reference.md), the fallback without --reference:
#: s/it, peak GB (syn_steps 50, expert_epochs 2)
REFERENCE = {1: (7.50, 3.8), 10: (73.6, 19.2)}


def _setup(tmp: Path):
    from synthetic import random_workspace

    from stages.allocator import keep_freed_memory

    keep_freed_memory()  # as the CLI does
    return random_workspace(tmp, train=5000, test=100)


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


def mtt_child(
    tmp: Path, ipc: int, aware: int, ck: int, dss: int, iterations: int, base: str = "mtt", compile_mode: str = "off"
) -> dict:
    from stages.condense import CondenseConfig, run
    from stages.config import build
    from stages.inputs import resolve

    ws, ds, labels = _setup(tmp)
    experts = resolve(ws, "experts")
    cfg = build(
        CondenseConfig,
        {
            "base": base,
            "ipc": ipc,
            "domain_aware": bool(aware),
            "iterations": iterations,
            "syn_steps": 50,
            "expert_epochs": 2,
            "max_start_epoch": 1,
            "lr_img": 1000.0,
            "checkpoint_student": bool(ck),
            "domain_syn_steps": dss or None,
            "compile": compile_mode,
            "log_every": 1,
            "checkpoint_every": 10**6,
            "checkpoint_minutes": 10**6,
            "first_checkpoint_minutes": 10**6,
        },
    )
    # force: every child shares the experts' workspace, and two configurations that differ only in settings
    # outside the cache key (checkpoint_student, compile) or a second round would be served from the cache
    art, hit = run(ds, labels, cfg, ws, experts=experts, force=True)
    assert not hit
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
    parser.add_argument("--reference", type=Path, help="folder with the reference repositories (bench/reference.py)")
    parser.add_argument("--rounds", type=int, default=1, help="with --reference: ours / reference alternations")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout instead of the table")
    parser.add_argument(
        "--base", default="mtt", choices=["mtt", "datm"], help="datm: DATM's iteration (the reference stays MTT's)"
    )
    parser.add_argument(
        "--compile",
        default="auto",
        choices=["auto", "on", "off"],
        help="the student's step compiled; auto: as `chddl condense` at the base's default length (compiled)",
    )
    args = parser.parse_args()
    if args.compile == "auto":
        from stages.condense import compiles_at
        from stages.methods import METHODS

        args.compile = "on" if compiles_at(args.base, METHODS.get(args.base).defaults["iterations"]) else "off"
    if args.child == "experts":
        print(json.dumps(experts_child(Path(args.tmp))))
        return
    if args.child:
        ipc, aware, ck, dss = map(int, args.child.split(":"))
        print(json.dumps(mtt_child(Path(args.tmp), ipc, aware, ck, dss, args.iterations, args.base, args.compile)))
        return
    if any(len(o.split(":")) != 4 or not o.replace(":", "").isdigit() for o in args.only or []):
        parser.error("--only takes ipc:chddl:checkpoint:domain_syn_steps as integers, e.g. 10:1:0:0")
    todo = [tuple(map(int, o.split(":"))) for o in args.only] if args.only else MATRIX
    with tempfile.TemporaryDirectory() as tmp:

        def child(name: str) -> dict:
            out = subprocess.run(
                [sys.executable, __file__, "--child", name, "--tmp", tmp, "--iterations", str(args.iterations)]
                + ["--base", args.base, "--compile", args.compile],
                capture_output=True,
                text=True,
                cwd=ROOT,
            )
            if out.returncode != 0:
                raise SystemExit(out.stderr[-3000:])
            return json.loads(out.stdout.strip().splitlines()[-1])

        # with --json, stdout carries only the JSON object; everything else goes to stderr
        say = functools.partial(print, file=sys.stderr if args.json else sys.stdout, flush=True)
        e = child("experts")
        say(
            f"expert training: {e['s_per_epoch_5000']:.2f} s per epoch of 5,000 images (reference 20.6), "
            f"peak RSS {e['peak_rss_gb']:.2f} GB",
        )
        import torch

        say(
            f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.iterations} iterations per run, "
            f"student compiled: {args.compile}"
        )
        say(
            "\n| run | s / iteration | peak RSS | reference s / it, peak | ours / reference (time, memory) "
            "| CHDDL / base (time, memory) |\n|---|---|---|---|---|---|"
        )
        rows, records = {}, []
        for ipc, aware, ck, dss in todo:
            side_by_side = args.reference is not None and not aware
            ours, theirs = [], []
            for _ in range(args.rounds if side_by_side else 1):
                ours.append(child(f"{ipc}:{aware}:{ck}:{dss}"))
                if side_by_side:
                    out = subprocess.run(
                        [
                            sys.executable,
                            str(ROOT / "bench" / "reference.py"),
                            "--reference",
                            str(args.reference),
                            "--method",
                            "mtt",
                            "--ipc",
                            str(ipc),
                            "--iterations",
                            str(args.iterations),
                        ],
                        capture_output=True,
                        text=True,
                        cwd=ROOT,
                    )
                    if out.returncode != 0:
                        raise SystemExit(out.stderr[-3000:])
                    theirs.append(json.loads(out.stdout.strip().splitlines()[-1]))
            r = rows[(ipc, aware, ck, dss)] = {
                "s_per_iteration": float(np.median([o["s_per_iteration"] for o in ours])),
                "peak_rss_gb": max(o["peak_rss_gb"] for o in ours),
            }
            base = rows.get((ipc, 0, ck, 0))
            over = (
                (r["s_per_iteration"] / base["s_per_iteration"], r["peak_rss_gb"] / base["peak_rss_gb"])
                if aware and base
                else None
            )
            if theirs:
                ref = (float(np.median([t["s_per_iteration"] for t in theirs])), max(t["peak_rss_gb"] for t in theirs))
                ref_cell = f"{ref[0]:.2f} s, {ref[1]:.2f} GB"
            else:
                ref, ref_cell = REFERENCE[ipc], f"{REFERENCE[ipc][0]} s, {REFERENCE[ipc][1]} GB (recorded)"
            ratio = (
                f"{r['s_per_iteration'] / ref[0]:.2f}x, {r['peak_rss_gb'] / ref[1]:.2f}x"
                + ("" if theirs else " (recorded)")
                if not aware
                else "-"
            )
            name = (
                f"{args.base.upper()}{'+CHDDL' if aware else ''} IPC {ipc}"
                f" ({'compiled' if args.compile == 'on' else 'eager'}, {'recomputed' if ck else 'residuals kept'})"
                f"{f' (domain student {dss} steps)' if dss else ''}"
            )
            over_cell = f"{over[0]:.2f}x, {over[1]:.2f}x" if over else "-"
            ours_cell = f"{r['s_per_iteration']:.2f} | {r['peak_rss_gb']:.2f} GB"
            say(f"| {name} | {ours_cell} | {ref_cell} | {ratio} | {over_cell} |")
            records.append(
                {
                    "run": name,
                    "base": args.base,
                    "ipc": ipc,
                    "chddl": bool(aware),
                    "checkpoint_student": bool(ck),
                    "domain_syn_steps": dss or None,
                    "compiled": args.compile == "on",
                    "s_per_iteration": r["s_per_iteration"],
                    "peak_rss_gb": r["peak_rss_gb"],
                    "reference": None
                    if aware
                    else {
                        "s_per_iteration": ref[0],
                        "peak_rss_gb": ref[1],
                        "source": "measured" if theirs else "recorded",
                    },
                    "ours_over_reference": None
                    if aware
                    else {"time": r["s_per_iteration"] / ref[0], "memory": r["peak_rss_gb"] / ref[1]},
                    "chddl_over_base": {"time": over[0], "memory": over[1]} if over else None,
                }
            )
        if args.json:
            print(json.dumps({"iterations": args.iterations, "experts": e, "runs": records}))


if __name__ == "__main__":
    main()
