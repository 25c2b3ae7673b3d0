"""Seconds per iteration and peak memory of DM, DC and MTT, each with and
without CHDDL, at IPC 1 and 10, with the paper's settings, beside the
paper's Table H (PACS, an A6000: "peak GPU memory - average loop time").

Settings: the shipped presets (condense/dm, condense/dc, condense/mtt_pacs_ipc1,
condense/mtt_pacs_ipc10: the reference implementations' and the paper's
Table I), 256 real images per group; MTT's start epoch is capped at 2 and
its experts trained for 2 + expert_epochs epochs (one class expert and one
per pseudo-domain): the time of an iteration does not depend on which
epoch a student starts from. Each configuration runs in its own process,
so its peak memory is its own.

    python bench/gpu/speed.py --data .data/pacs64_gpu.npz --device cuda --out OUT_DIR
    python bench/gpu/speed.py --data builtin:demo --device cpu --iterations 1 --smoke --out OUT_DIR
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # this checkout's code before an editable install's (bench/_tree.py)
MATRIX = [(b, ipc, aware) for b in ("dm", "dc", "mtt") for ipc in (1, 10) for aware in (0, 1)]
#: the paper's Table H, PACS: (peak GiB, seconds per loop) on an A6000
TABLE_H = {
    ("dc", 1, 0): (3, 0.4),
    ("dc", 1, 1): (3, 0.7),
    ("dc", 10, 0): (4, 26.6),
    ("dc", 10, 1): (5, 31.4),
    ("dm", 1, 0): (1, 0.1),
    ("dm", 1, 1): (1, 0.2),
    ("dm", 10, 0): (1, 0.2),
    ("dm", 10, 1): (2, 0.2),
    ("mtt", 1, 0): (1, 2.5),
    ("mtt", 1, 1): (3, 4.0),
    ("mtt", 10, 0): (13, 2.3),
    ("mtt", 10, 1): (25, 5.1),
}


def _preset(base: str, ipc: int) -> str:
    return {"dm": "condense/dm", "dc": "condense/dc"}.get(base, f"condense/mtt_pacs_ipc{ipc}")


def one(data: str, base: str, ipc: int, aware: int, iterations: int, device: str, smoke: bool, tmp: Path) -> dict:
    """One configuration, in this process."""
    import torch

    from stages.artifacts import Workspace
    from stages.condense import CondenseConfig, run
    from stages.config import build, load_preset, section
    from stages.data.dataset import load_dataset
    from stages.data.ingest import DatasetConfig, ingest
    from stages.label import LabelConfig, load_labels
    from stages.label import run as label_run
    from stages.pretrain_experts import ExpertsConfig
    from stages.pretrain_experts import run as experts_run

    dev = torch.device(device)
    ws = Workspace(tmp / "ws")
    ds = load_dataset(ingest(data, build(DatasetConfig, {"size": 32 if smoke else 64}), ws)[0])
    labels = load_labels(label_run(ds, build(LabelConfig), ws, device=dev)[0], ds)
    preset = section(load_preset(_preset(base, ipc)), "condense")
    overrides = {
        "ipc": ipc,
        "domain_aware": bool(aware),
        "iterations": iterations,
        "log_every": 1,
        "compile": "off",
        "checkpoint_every": 10**6,
        "checkpoint_minutes": 10**6,
        "first_checkpoint_minutes": 10**6,
    }
    experts = None
    if base == "mtt":
        overrides["max_start_epoch"] = 2
        epochs = 2 + int(preset["expert_epochs"])
        experts = experts_run(ds, labels, build(ExpertsConfig, {"num_experts": 1, "epochs": epochs}), ws, device=dev)[0]
    if smoke:
        overrides |= {"batch_real": 16, "syn_steps": 2}
    cfg = build(CondenseConfig, preset, overrides)
    art, _ = run(ds, labels, cfg, ws, experts=experts, device=dev)
    cost = art.meta["cost"]
    return {
        "s_per_iteration": art.metrics["s_per_iteration"],
        "peak_cuda_gib": cost.get("peak_cuda_bytes", 0) / 2**30,
        "peak_rss_gib": cost["peak_rss_bytes"] / 2**30,
        "iterations": iterations,
        "device": device,
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name() if dev.type == "cuda" else None,
    }


def table(rows: dict) -> str:
    lines = ["| run | s / iteration | peak CUDA GiB | paper (A6000): GiB - s | CHDDL / base |", "|---|---|---|---|---|"]
    for (base, ipc, aware), r in rows.items():
        plain = rows.get((base, ipc, 0))
        over = f"{r['s_per_iteration'] / plain['s_per_iteration']:.2f}x" if aware and plain else "-"
        paper = TABLE_H.get((base, ipc, aware))
        lines.append(
            f"| {base.upper()}{' + CHDDL' if aware else ''} IPC {ipc} | {r['s_per_iteration']:.3f} | "
            f"{r['peak_cuda_gib']:.2f} | {f'{paper[0]} GiB - {paper[1]} s' if paper else '-'} | {over} |"
        )
    return "\n".join(lines)


def _write(out: Path, rows: dict, failed: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "speed.json").write_text(
        json.dumps({"rows": {f"{b}:{i}:{a}": r for (b, i, a), r in rows.items()}, "failed": failed}, indent=1)
    )
    (out / "speed.md").write_text(table(rows) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="dataset source (.npz, folder or builtin:demo)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--dc-iterations", type=int, help="iterations of the DC rows [--iterations]; DC IPC 10 is slow")
    parser.add_argument("--out", type=Path, required=True, help="folder for speed.json and speed.md")
    parser.add_argument("--smoke", action="store_true", help="tiny settings (CPU, demo data): proves the script runs")
    parser.add_argument("--only", action="append", help="base:ipc:chddl, repeatable (e.g. dm:10:1)")
    parser.add_argument(
        "--one-process",
        action="store_true",
        help="every configuration in this process, one workspace (dataset, labels, experts made once; peak CUDA "
        "memory is still per configuration, peak RSS is not)",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--tmp", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        base, ipc, aware = args.child.split(":")
        print(
            json.dumps(
                one(args.data, base, int(ipc), int(aware), args.iterations, args.device, args.smoke, Path(args.tmp))
            )
        )
        return
    todo = [(b, int(i), int(a)) for b, i, a in (o.split(":") for o in args.only)] if args.only else MATRIX
    if args.smoke and not args.only:
        todo = [("dm", 1, 1), ("mtt", 1, 1)]
    rows, failed = {}, {}
    with tempfile.TemporaryDirectory() as shared:
        for base, ipc, aware in todo:
            its = args.dc_iterations if base == "dc" and args.dc_iterations else args.iterations
            name = f"{base}:{ipc}:{aware}"
            if args.one_process:
                try:
                    rows[(base, ipc, aware)] = one(
                        args.data, base, ipc, aware, its, args.device, args.smoke, Path(shared)
                    )
                except Exception as err:  # noqa: BLE001 - a failed row is recorded and the others still run
                    failed[name] = f"{type(err).__name__}: {err}"[-1500:]
            else:
                with tempfile.TemporaryDirectory() as tmp:
                    cmd = [sys.executable, __file__, "--child", name, "--tmp", tmp, "--data", args.data]
                    cmd += ["--device", args.device, "--iterations", str(its), "--out", str(args.out)]
                    out = subprocess.run(
                        cmd + (["--smoke"] if args.smoke else []), capture_output=True, text=True, cwd=ROOT
                    )
                if out.returncode != 0:
                    failed[name] = out.stderr[-1500:]
                else:
                    rows[(base, ipc, aware)] = json.loads(out.stdout.strip().splitlines()[-1])
            if name in failed:
                print(f"{base} ipc {ipc} chddl {aware}: FAILED\n{failed[name]}", file=sys.stderr, flush=True)
            else:
                r = rows[(base, ipc, aware)]
                print(
                    f"{base} ipc {ipc} chddl {aware}: {r['s_per_iteration']:.4f} s/it, {r['peak_cuda_gib']:.2f} GiB",
                    file=sys.stderr,
                    flush=True,
                )
            _write(args.out, rows, failed)  # after every row: a killed run keeps what finished
    print(table(rows))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
