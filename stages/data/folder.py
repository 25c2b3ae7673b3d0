"""Reader for image-folder trees: the layouts of ``stages.data.layouts``, decoded in parallel straight into
the dataset's uint8 array."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from stages.data.images import decode_into
from stages.data.layouts import list_images
from stages.data.raw import RawDataset
from stages.errors import ChddlError
from stages.progress import NullProgress, Progress


def default_workers() -> int:
    """Decoding threads: one per core this process may use (PIL releases the GIL while decoding and resizing)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def read_folder(
    root: Path, size: int, progress: Progress = NullProgress(), workers: int = 0, crossval: str = "train"
) -> RawDataset:
    """Decode the image tree at ``root`` (any layout of ``stages.data.layouts``) at ``size`` px."""
    listing = list_images(root, crossval)
    entries = listing.entries
    out = np.empty((len(entries), 3, size, size), dtype=np.uint8)  # the result, filled in place: no second copy
    ok = np.zeros(len(entries), dtype=bool)

    def decode(i: int) -> None:
        ok[i] = decode_into(entries[i][0], size, out[i])

    with (
        progress.task(f"decoding {len(entries)} images", total=len(entries)) as task,
        ThreadPoolExecutor(workers or default_workers()) as pool,
    ):
        step = 256
        for start in range(0, len(entries), step):
            list(pool.map(decode, range(start, min(start + step, len(entries)))))
            task.advance(min(step, len(entries) - start))
    skipped = [str(entries[i][0]) for i in np.flatnonzero(~ok)]
    if not ok.any():
        raise ChddlError(f"none of the {len(entries)} image files under {root} could be decoded")
    if skipped:
        out = out[ok]
        entries = [e for e, good in zip(entries, ok) if good]
    has_domains = listing.domain_names is not None
    raw = RawDataset(
        images=torch.from_numpy(out),
        labels=torch.tensor([listing.class_names.index(c) for _, _, c, _ in entries], dtype=torch.int64),
        class_names=listing.class_names,
        domains=torch.tensor([listing.domain_names.index(d) for _, d, _, _ in entries], dtype=torch.int64)
        if has_domains
        else None,
        domain_names=listing.domain_names,
        split=torch.tensor([s for *_, s in entries], dtype=torch.int64) if entries[0][3] is not None else None,
        skipped=skipped,
        source_format=f"folder/{listing.layout}",
    )
    raw.check(str(root))
    return raw
