"""What continuing a finished condensation to a longer budget costs (issue "Settle
why CHDDL shows no gain", acceptance: 20 -> 30 iterations costs about 10
iterations' time, not 30).

For each base (DM+CHDDL by default) it runs, in fresh workspaces on the
built-in demo dataset: a straight SHORT-iteration set, then LONG iterations of
the same settings (which continues the SHORT set), and a straight LONG set in
a second workspace. It prints the wall time of each, the continued stretch's
share of the straight run, and whether the continued images equal the
straight ones bit for bit.

    python bench/continuation_cost.py [--short 20] [--long 30] [--bases dm dc] [--threads N]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import _tree  # noqa: F401  (this checkout first on sys.path)
import torch

from stages import api


def timed_condense(workspace: Path, base: str, iterations: int) -> tuple[float, torch.Tensor, dict]:
    """Wall seconds, final images and metrics of one condense call."""
    t0 = time.perf_counter()
    result = api.condense(workspace=workspace, base=base, ipc=1, iterations=iterations, device="cpu", seed=0)
    wall = time.perf_counter() - t0
    return wall, result.artifact.tensor("images"), result.artifact.metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short", type=int, default=20)
    parser.add_argument("--long", type=int, default=30)
    parser.add_argument("--bases", nargs="+", default=["dm"])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, demo dataset, IPC 1, CHDDL on")
    print(
        "| base | straight short s | continued short -> long s | straight long s | continued / straight long "
        "| same images |"
    )
    print("|---|---|---|---|---|---|")
    for base in args.bases:
        with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
            for ws in (Path(a), Path(b)):
                api.label("builtin:demo", workspace=ws, device="cpu")
            short_s, _, _ = timed_condense(Path(a), base, args.short)
            cont_s, cont_images, metrics = timed_condense(Path(a), base, args.long)
            if "continued_from" not in metrics:
                raise SystemExit(f"{base}: {args.long} iterations did not continue the {args.short}-iteration set")
            long_s, long_images, _ = timed_condense(Path(b), base, args.long)
            same = bool(torch.equal(cont_images, long_images))
            print(f"| {base} | {short_s:.2f} | {cont_s:.2f} | {long_s:.2f} | {cont_s / long_s:.2f} | {same} |")


if __name__ == "__main__":
    main()
