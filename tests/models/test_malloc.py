"""Freed memory kept for reuse (``semoe.models.malloc``): the page faults it exists to remove."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

# Allocates, touches and frees 64 MiB twenty times; prints the minor page faults that cost.
PROBE = """
import resource, sys
from semoe.models.malloc import keep_freed_memory
if sys.argv[1] == "reuse":
    assert keep_freed_memory()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    block = bytearray(64 << 20)
    del block
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return int(out.stdout)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_freed_memory_is_reused_instead_of_faulted_in_again():
    pages = 20 * (64 << 20) // 4096
    system, reuse = _faults("system"), _faults("reuse")
    assert system > pages // 2  # glibc maps each 64 MiB block afresh: every page faults again
    assert reuse < pages // 10  # the first block's pages serve the next nineteen
