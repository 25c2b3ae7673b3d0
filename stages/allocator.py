"""Keep freed memory in the process instead of returning it to the OS (glibc).

By default glibc serves every allocation above a dynamic threshold (at most
32 MB) with its own mmap and trims freed memory at the top of the heap, so
each iteration of a condensation loop, which frees and re-allocates the same
large activations, faults fresh zeroed pages in again: on 2 CPU cores this
was a third of DM's time (1.0 M minor page faults and 1.6 s of system time
per IPC 10 iteration; BENCHMARKS.md). Raising the
trim threshold to its maximum and the mmap threshold to 128 MB makes the
blocks of such loops come from the heap and stay there for reuse, while
blocks of 128 MB and more keep their own mappings: on the heap, large
blocks of varied sizes fragment it (a peak 2.3x the live memory measured
on a 100-class DM + CHDDL run).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

from stages.errors import ChddlError

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
_LIMIT = 2**31 - 1  # mallopt takes an int
#: blocks from this size up get their own mapping (returned at free): measured on 100 classes x IPC 10 x D 4 at 64 px,
#: DM + CHDDL peaked at 13.2 GB with every block on the heap (fragmentation) and 5.7 GB with 128 MB, at the same
#: DM speed at 32 px (BENCHMARKS.md); CHDDL_MMAP_THRESHOLD_MB overrides it
MMAP_THRESHOLD_MB = 128
_done = False


def keep_freed_memory() -> bool:
    """Tune glibc's allocator as above, once per process; True when applied.
    A no-op elsewhere (musl, macOS, Windows) or with ``CHDDL_KEEP_MEMORY=0``."""
    global _done
    if _done:
        return True
    if os.environ.get("CHDDL_KEEP_MEMORY", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    raw = os.environ.get("CHDDL_MMAP_THRESHOLD_MB", str(MMAP_THRESHOLD_MB)).strip()
    if not raw.isdigit() or int(raw) < 1:
        raise ChddlError(
            f"CHDDL_MMAP_THRESHOLD_MB must be a whole number of megabytes, 1 or more, got '{raw}'; "
            f"unset it for the default ({MMAP_THRESHOLD_MB})"
        )
    mmap_mb = int(raw)
    _done = bool(mallopt(M_MMAP_THRESHOLD, min(mmap_mb * 2**20, _LIMIT))) and bool(mallopt(M_TRIM_THRESHOLD, _LIMIT))
    return _done
