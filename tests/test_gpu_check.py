"""The prepared device check keeps working: its --smoke mode on CPU and the demo data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_device_check_smoke_run_passes_on_cpu(tmp_path) -> None:
    env = os.environ | {
        "OUT": str(tmp_path),
        "PYTHON": sys.executable,
        "REFERENCE": str(tmp_path / "no-reference"),
    }
    out = subprocess.run(
        ["bash", "bench/gpu/check.sh", "--smoke"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    rows = json.loads((tmp_path / "speed.json").read_text())["rows"]
    assert set(rows) == {"dm:1:1", "mtt:1:1"} and all(r["s_per_iteration"] > 0 for r in rows.values())
    assert "| DM + CHDDL IPC 1 |" in (tmp_path / "speed.md").read_text()
    assert "skipped" in (tmp_path / "cuda_tests.log").read_text()  # no GPU here: collected, then skipped


def test_the_carried_pacs_subset_keeps_classes_domains_and_split(tmp_path) -> None:
    sys.path.insert(0, str(ROOT / "bench" / "gpu"))
    from prepare_data import subset

    rng = np.random.default_rng(0)
    src = tmp_path / "src.npz"
    np.savez(
        src,
        images=rng.integers(0, 256, (200, 8, 8, 3), dtype=np.uint8),
        labels=np.arange(200) % 4,
        domains=np.arange(200) % 3,
        split=(np.arange(200) % 5 == 0).astype(np.int64),
        class_names=np.array(list("abcd")),
        domain_names=np.array(list("xyz")),
    )
    out = subset(src, tmp_path / "dst.npz", train_per_class=10, test_per_class=3)
    data = np.load(tmp_path / "dst.npz")
    assert out["images"] == len(data["labels"]) == 4 * 13
    assert all(((data["labels"] == c) & (data["split"] == 0)).sum() == 10 for c in range(4))
    assert list(data["class_names"]) == list("abcd") and data["images"].dtype == np.uint8


def test_the_ladder_pack_replaces_only_its_own_earlier_pack(tmp_path) -> None:
    import argparse

    sys.path.insert(0, str(ROOT / "bench" / "gpu"))
    from ladder import PART_BYTES, _pack

    art = tmp_path / "ws" / "artifacts" / "condensed-dm-ipc1-abc"
    art.mkdir(parents=True)
    (art / "meta.yaml").write_text("stage: condensed")
    (art / "final_state.safetensors").write_bytes(np.random.default_rng(0).bytes(PART_BYTES + 1000))
    (art / "grid.png").write_bytes(b"png")
    out = tmp_path / "out"
    out.mkdir()
    mine = {"dm-ipc1.tar.gz.mine": b"user", "dm-ipc1.tar.gz.part7x": b"user", "notes.txt": b"user"}
    for name, data in mine.items():
        (out / name).write_bytes(data)
    args = argparse.Namespace(workspace=tmp_path / "ws", out=out)
    _pack(args, "dm-ipc1", [art], "condensed-dm-ipc1-")  # over one part: split
    assert {p.name for p in out.iterdir()} - set(mine) == {"dm-ipc1.tar.gz.part00", "dm-ipc1.tar.gz.part01"}
    (art / "final_state.safetensors").unlink()
    _pack(args, "dm-ipc1", [art], "condensed-dm-ipc1-")  # small again: one file, the parts gone
    assert {p.name for p in out.iterdir()} - set(mine) == {"dm-ipc1.tar.gz"}
    assert all((out / name).read_bytes() == data for name, data in mine.items())
