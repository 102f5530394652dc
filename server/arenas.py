"""glibc's malloc arenas, capped for the coordinator.

glibc gives each thread that allocates under contention an arena of its own (up to 8 per core),
and freed memory stays in the arena it came from. The coordinator's handler threads (several
per client) each touch blob-sized buffers, so with many clients the freed-but-kept memory grows
with the number of threads, not with the work: bench/scale.py saw full FedAvg's peak RSS at
100 clients go from 4,168 MiB to 2,826 MiB with ``MALLOC_ARENA_MAX=2`` (docs/benchmarks.md).
Large buffers (above the mmap threshold) are unaffected either way.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_ARENA_MAX = -8  # mallopt parameter, glibc's malloc.h
ARENAS = 2


def cap_arenas(n: int = ARENAS) -> bool:
    """Caps glibc's arenas at ``n`` for the threads started from now on, unless the operator
    set ``MALLOC_ARENA_MAX`` (theirs stands). False where the C library is not glibc."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(M_ARENA_MAX, n))
    except (OSError, AttributeError):  # not glibc: no mallopt, nothing to cap
        return False
