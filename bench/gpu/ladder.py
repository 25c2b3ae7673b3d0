"""DM and DM + CHDDL at the paper's budget on a GPU, as iteration ladders
that fit a lease: each (IPC, with or without CHDDL) chain condenses rung by
rung (each rung continues the finished shorter one), evaluates every
finished rung at the paper's protocol (preset evaluate/paper: 10 runs x
1,000 epochs, ConvNet), and the random-real baseline of each IPC, all
through the ``chddl`` CLI in one workspace. The chains run at once, one
process each, and stop at ``--minutes``: a condense or evaluate still
running then gets SIGTERM, checkpoints and is resumed by the next call of
this script with the same workspace.

After every step each chain's artifacts are packed into ``OUT/<chain>.tar.gz``
(meta.yaml and tensors of its sets and evaluations; ``final_state`` of its
top rung only, or the checkpoint of an interrupted rung; in 15 MiB parts
``<chain>.tar.gz.partNN`` when larger: DM + CHDDL IPC 10's final state
alone is 33 MiB, its masks being per image), so a killed lease
still returns what finished, and a later session can continue the ladder
from the committed files.

    python bench/gpu/ladder.py --data .data/pacs_64.npz --workspace chddl-runs/pacs64 --out $OUT --minutes 5
    python bench/gpu/ladder.py --data builtin:demo --workspace /tmp/ws --out /tmp/o --device cpu --smoke
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: what a smoke run on CPU changes (proves the script runs; numbers mean nothing)
SMOKE = ["--batch-real", "16"]
SMOKE_EVAL = ["--runs", "2", "--epochs", "3"]
#: files of a set left out of the pack: pictures, and the learned masks (also inside final_state)
BULK = {"grid.png", "extra_domain_views.png", "extra_domain_masks.safetensors"}
#: the largest file the device returns is 16 MiB
PART_BYTES = 15 * 2**20


class Deadline:
    def __init__(self, minutes: float) -> None:
        self.end = time.monotonic() + 60 * minutes

    def left(self) -> float:
        return self.end - time.monotonic()


def _cli(args: argparse.Namespace, *command: str) -> list[str]:
    return [sys.executable, "-m", "chddl_cli", "-q", "-w", str(args.workspace), "--device", args.device,
            "--threads", str(args.threads), *command, "--json"]  # fmt: skip


def _call(cmd: list[str], deadline: Deadline, log) -> dict | None:
    """Run ``cmd``; SIGTERM it at the deadline (it checkpoints) and return its JSON, or None if it did not finish."""
    if deadline.left() < 5:
        return None
    log(f"$ {' '.join(cmd[2:])}")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        out, err = proc.communicate(timeout=max(deadline.left(), 1))
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        log(f"  stopped at the deadline (exit {proc.returncode}): {err.strip().splitlines()[-1:]}")
        return None
    if proc.returncode != 0:
        log(f"  failed (exit {proc.returncode}): {err.strip()[-600:]}")
        return {"failed": err.strip()[-600:]}
    return json.loads(out)


def _pack(args: argparse.Namespace, chain: str, artifacts: list[Path], partial_prefix: str) -> None:
    """Write OUT/<chain>.tar.gz: the chain's artifacts without bulk; the top rung's final state or the checkpoint
    of an unfinished rung (the only state a continuation needs)."""
    ws = Path(args.workspace)
    partials = sorted((ws / "partial").glob(partial_prefix + "*")) if (ws / "partial").is_dir() else []
    condensed = [a for a in artifacts if a.name.startswith("condensed-")]
    keep_state = None if partials else (condensed[-1] if condensed else None)
    tmp = Path(args.out) / f".{chain}.tar.gz"
    with tarfile.open(tmp, "w:gz") as tar:
        for art in artifacts:
            for f in sorted(art.iterdir()):
                if f.name in BULK or (f.name == "final_state.safetensors" and art != keep_state):
                    continue
                tar.add(f, arcname=f"artifacts/{art.name}/{f.name}")
        for p in partials:
            for f in sorted(p.iterdir()):
                tar.add(f, arcname=f"partial/{p.name}/{f.name}")
    # only this script's own earlier pack of the chain is replaced, never other files in OUT
    for old in [Path(args.out) / f"{chain}.tar.gz", *Path(args.out).glob(f"{chain}.tar.gz.part[0-9][0-9]")]:
        old.unlink(missing_ok=True)
    data = tmp.read_bytes()
    if len(data) <= PART_BYTES:
        os.replace(tmp, Path(args.out) / f"{chain}.tar.gz")
        return
    # a file over 16 MiB does not come back from the device: parts, joined here with `cat CHAIN.tar.gz.part* | tar xz`
    for i in range(0, len(data), PART_BYTES):
        (Path(args.out) / f"{chain}.tar.gz.part{i // PART_BYTES:02d}").write_bytes(data[i : i + PART_BYTES])
    tmp.unlink()


def chain(args: argparse.Namespace, ipc: int, aware: bool, labels: str, deadline: Deadline, summary: dict) -> None:
    name = f"{'chddl' if aware else 'dm'}-ipc{ipc}"
    prefix = f"condensed-{'dm_chddl' if aware else 'dm'}-ipc{ipc}-"
    lock = threading.Lock()

    def log(msg: str) -> None:
        with lock:
            print(f"[{name} {deadline.left():6.0f}s left] {msg}", flush=True)

    artifacts: list[Path] = [Path(labels)]
    rows = summary.setdefault(name, [])
    extra = SMOKE if args.smoke else []
    evaluate = ["--config", args.eval_config, "--parallel", str(args.parallel)] + (SMOKE_EVAL if args.smoke else [])
    for rung in args.rungs:
        cmd = _cli(args, "condense", "--config", "dm", "--labels", labels, "--ipc", str(ipc), "--iterations", str(rung))
        cmd += (["--domain-aware"] if aware else ["--no-domain-aware"]) + extra
        done = _call(cmd, deadline, log)
        if done and "failed" in done and "--compile" not in cmd:
            log("  retrying with --compile off")
            done = _call(cmd + ["--compile", "off"], deadline, log)
        if not done or "failed" in done:
            _pack(args, name, artifacts, prefix)
            return
        art = Path(done["artifact"])
        artifacts.append(art)
        row = {"iterations": rung, "set": art.name, "s_per_iteration": done["metrics"].get("s_per_iteration"),
               "peak_cuda_gib": round(done["cost"].get("peak_cuda_bytes", 0) / 2**30, 3),
               "wall_s_total": done["cost"].get("wall_s_total", done["cost"].get("wall_s"))}  # fmt: skip
        rows.append(row)
        _pack(args, name, artifacts, prefix)
        ev = _call(_cli(args, "evaluate", str(art), *evaluate), deadline, log)
        if ev and "failed" in ev and args.parallel > 1:
            log("  retrying with --parallel 1")
            ev = _call(_cli(args, "evaluate", str(art), *evaluate, "--parallel", "1"), deadline, log)
        if ev and "failed" not in ev:
            artifacts.append(Path(ev["artifact"]))
            row["accuracy"] = ev["metrics"]["convnet"]
            log(f"  {rung} iterations: {row['accuracy']['mean']:.2f} ± {row['accuracy']['std']:.2f}")
        if not aware and rung == args.rungs[0]:
            base = _call(_cli(args, "evaluate", "--baseline", "random", "--ipc", str(ipc), *evaluate), deadline, log)
            if base and "failed" not in base:
                artifacts.append(Path(base["artifact"]))
                summary.setdefault(f"random-ipc{ipc}", base["metrics"]["convnet"])
        _pack(args, name, artifacts, prefix)


def _rungs(text: str) -> list[int]:
    try:
        rungs = [int(r) for r in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not comma-separated iteration counts: {text!r}") from None
    if not rungs or any(r < 1 for r in rungs) or rungs != sorted(set(rungs)):
        raise argparse.ArgumentTypeError(f"rungs must be increasing positive iteration counts, got {text!r}")
    return rungs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="dataset (.npz, folder, builtin:demo)")
    parser.add_argument("--workspace", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="folder for the chains' tar.gz files")
    parser.add_argument("--minutes", type=float, default=5.0, help="stop (checkpointing) after this long")
    parser.add_argument(
        "--rungs", type=_rungs, default=[2000, 5000, 20000], help="increasing iteration counts, comma-separated"
    )
    parser.add_argument("--ipc", type=int, action="append", help="IPC of the chains, repeatable [10 and 1]")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads of each process")
    parser.add_argument("--eval-config", default="paper", help="evaluate preset [paper: 10 runs x 1,000 epochs]")
    parser.add_argument("--parallel", type=int, default=10, help="evaluation runs trained at once (vmap)")
    parser.add_argument("--smoke", action="store_true", help="tiny settings: proves the script runs (CPU)")
    args = parser.parse_args()
    if args.minutes <= 0:
        parser.error(f"--minutes must be positive, got {args.minutes}")
    args.out.mkdir(parents=True, exist_ok=True)
    deadline = Deadline(args.minutes)
    label_cmd = [sys.executable, "-m", "chddl_cli", "-q", "-w", str(args.workspace), "--device", args.device]
    label_cmd += ["label", args.data, "--json"] + ([] if args.smoke else ["--config", "pacs_64"])
    labels = json.loads(subprocess.run(label_cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout)
    summary: dict = {}
    threads = [
        threading.Thread(target=chain, args=(args, ipc, aware, labels["artifact"], deadline, summary))
        for ipc in (args.ipc or [10, 1])
        for aware in (False, True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print("ladder summary:", json.dumps(summary, indent=1), flush=True)


if __name__ == "__main__":
    main()
