"""The benchmarks' input: random images of the size the reference was timed on."""

from __future__ import annotations

from pathlib import Path

import _tree  # noqa: F401  (this checkout first on sys.path)
import numpy as np


def random_workspace(tmp: Path, train: int = 5000, test: int = 0, size: int = 32, classes: int = 10):
    """A workspace in ``tmp`` holding a dataset of ``train`` + ``test`` random
    images (speed does not depend on content) and random pseudo-domain labels
    (D = 4); returns (workspace, dataset, labels)."""
    from stages.artifacts import Workspace
    from stages.config import build
    from stages.data.dataset import load_dataset
    from stages.data.ingest import DatasetConfig, ingest
    from stages.label import LabelConfig, load_labels
    from stages.label import run as label_run

    n = train + test
    rng = np.random.default_rng(0)
    path = Path(tmp) / "bench.npz"
    np.savez(
        path,
        images=rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
        labels=np.arange(n) % classes,
        split=(np.arange(n) >= train).astype(np.int64),
    )
    ws = Workspace(Path(tmp) / "ws")
    ds = load_dataset(ingest(str(path), build(DatasetConfig, {"size": size}), ws)[0])
    labels = load_labels(label_run(ds, build(LabelConfig, {"labeler": "random"}), ws)[0], ds)
    return ws, ds, labels
