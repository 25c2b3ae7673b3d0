"""Where one condensation iteration spends its time: wall, user and system
seconds, minor page faults and peak RSS per iteration, and with --profile
the top operators of torch.profiler.

Input as bench/condense_speed.py: 10 classes x 500 random 32x32x3 images,
256 real per class, D = 4.

    python bench/profile_iteration.py dm 10           # base ipc [chddl 0/1]
    python bench/profile_iteration.py dc 1 0 --profile
    CHDDL_KEEP_MEMORY=0 python bench/profile_iteration.py dm 10   # glibc's default allocator behaviour
    python bench/profile_iteration.py dc 1 0 --compile on --flops --target 3.42   # the floor (bench/flops.py)
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path
from typing import Callable

import _tree  # noqa: F401  (this checkout first on sys.path)
import torch
from synthetic import random_workspace

from stages.allocator import keep_freed_memory
from stages.condense import CondenseConfig, _build, _settings
from stages.config import build
from stages.methods.loop import Loop, iteration_generator
from stages.progress import NullProgress


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base")
    parser.add_argument("ipc", type=int)
    parser.add_argument("chddl", type=int, nargs="?", default=0)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--compile", default="off", choices=["on", "off"])
    parser.add_argument("--profile", action="store_true")
    parser.add_argument(
        "--flops", action="store_true", help="count one iteration's FLOPs (eager) and print its floor here"
    )
    parser.add_argument("--target", type=float, help="with --flops: a target s/it to set beside the floor")
    args = parser.parse_args()
    keep_freed_memory()
    with tempfile.TemporaryDirectory() as tmp:
        ws, ds, labels = random_workspace(Path(tmp))
        iteration = _iterations(args, ds, labels, args.compile, Path(tmp) / "p")
        iteration(0)
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        for i in range(1, 1 + args.iterations):
            iteration(i)
        r1, t1, n = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter(), args.iterations
        print(
            f"{args.base} IPC {args.ipc} chddl {args.chddl} (torch {torch.__version__}, {torch.get_num_threads()} "
            f"threads): {(t1 - t0) / n:.3f} s/it, user {(r1.ru_utime - r0.ru_utime) / n:.2f} s, system "
            f"{(r1.ru_stime - r0.ru_stime) / n:.2f} s, {(r1.ru_minflt - r0.ru_minflt) / n:.0f} minor faults per "
            f"iteration, peak RSS {r1.ru_maxrss / 2**20:.2f} GB"
        )
        if args.profile:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU]) as prof:
                iteration(1 + n)
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
        if args.flops:
            from flops import conv_rate, count_flops, floor_report

            eager = _iterations(args, ds, labels, "off", Path(tmp) / "f")
            eager(0)
            work = count_flops(lambda: eager(1))
            name = f"{args.base} IPC {args.ipc} chddl {args.chddl}, one iteration"
            print(floor_report(name, work, (t1 - t0) / n, conv_rate(), args.target))


def _iterations(args, ds, labels, compile: str, folder: Path) -> Callable[[int], None]:
    """The method of ``args`` built on the bench's input; returns a function running its iteration ``i``."""
    settings = {"base": args.base, "ipc": args.ipc, "domain_aware": bool(args.chddl), "iterations": 100}
    cfg = build(CondenseConfig, settings | {"batch_real": 256, "compile": compile}).resolved()
    base, objective, images, _, _ = _build(ds, labels, cfg, torch.device("cpu"))
    loop = Loop(base, objective, images, _settings(cfg, base), "profile", folder, NullProgress())

    def iteration(i: int) -> None:
        g = iteration_generator(0, i)
        base.new_round(i, objective.roles, g)
        for step in range(base.steps_per_round()):
            loop.step(g)
            base.after_step(step, objective.training_sets(images), g)

    return iteration


if __name__ == "__main__":
    main()
