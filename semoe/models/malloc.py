"""glibc's malloc in the processes that run models: freed memory kept for reuse.

A forward pass allocates and frees the same large activations for every layer (on the README
demo's 16-row batches of ~800-token prompts, tens of MB each). glibc serves allocations above
its mmap threshold (at most 32 MiB) with fresh ``mmap`` s and returns them on free, so every
reuse starts over with one page fault per 4 KiB: ~3 million faults, ~8 s of system CPU and
~10 % of the wall time of 32 such questions on this project's 2-core machine
(``benchmarks/bench_malloc.py``). PyTorch's CPU performance guide recommends a caching
allocator (jemalloc or tcmalloc, loaded with ``LD_PRELOAD``) for this reason; ``mallopt``
gets the same effect in-process: no mmap, so large blocks come from the heap, and the heap
trimmed only above ``TRIM_THRESHOLD``. Results do not change (only where memory comes from);
a process may keep up to ``TRIM_THRESHOLD`` of freed memory.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import platform

# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
TRIM_THRESHOLD = 1 << 30  # bytes of free memory at the heap's top before it is returned to the OS


@functools.cache
def keep_freed_memory() -> bool:
    """Make this process's glibc malloc keep freed memory for reuse (see the module docstring).
    Once per process (setting it twice is harmless); True when in effect, False where the C
    library is not glibc or refuses."""
    if platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    # mallopt returns 1 on success
    return libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
