"""Wall time and peak memory of a stage, for its artifact metadata."""

from __future__ import annotations

import resource
import sys
import time
from contextlib import contextmanager
from typing import Iterator

import torch


def peak_rss_bytes() -> int:
    """High-water mark of this process's resident memory, in bytes."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


@contextmanager
def measure() -> Iterator[dict]:
    """Fill the yielded dict with ``wall_s``, ``peak_rss_bytes`` and, on CUDA,
    ``peak_cuda_bytes`` when the block ends.

    RSS is the process's high-water mark (the OS offers no per-block reset),
    so it bounds the stage's own peak from above.
    """
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    record: dict = {}
    try:
        yield record
    finally:
        record["wall_s"] = round(time.perf_counter() - start, 4)
        record["peak_rss_bytes"] = peak_rss_bytes()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            record["peak_cuda_bytes"] = int(torch.cuda.max_memory_allocated())


def resumed_cost(cost: dict, earlier_s: float) -> dict:
    """``earlier_wall_s`` (time interrupted runs spent on work this run
    resumed) and ``wall_s_total`` (that plus this run's ``wall_s``): without
    them a resumed stage would record only its last stretch."""
    return {"earlier_wall_s": round(earlier_s, 2), "wall_s_total": round(cost["wall_s"] + earlier_s, 2)}
