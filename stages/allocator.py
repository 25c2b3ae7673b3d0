"""Keep freed memory in the process instead of returning it to the OS (glibc).

By default glibc serves every allocation above a dynamic threshold (at most
32 MB) with its own mmap and trims freed memory at the top of the heap, so
each iteration of a condensation loop, which frees and re-allocates the same
large activations, faults fresh zeroed pages in again: on 2 CPU cores this
was a third of DM's time (1.0 M minor page faults and 1.6 s of system time
per IPC 10 iteration; BENCHMARKS.md). Raising both thresholds to their
maximum makes large blocks come from the heap and stay there for reuse. The
peak memory is unchanged (the process keeps what it peaked at until it
exits, which a one-stage command does at once).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
_LIMIT = 2**31 - 1  # mallopt takes an int
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
    _done = bool(mallopt(M_MMAP_THRESHOLD, _LIMIT)) and bool(mallopt(M_TRIM_THRESHOLD, _LIMIT))
    return _done
