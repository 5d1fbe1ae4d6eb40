"""Memory of a routing evaluation: the peak memory of a block (CUDA allocator or process RSS)
and the bytes a KV cache holds."""

from __future__ import annotations

import resource
import sys
from typing import Any


class PeakMemory:
    """Peak memory of a block.

    CUDA: the allocator's peak (``torch.cuda.max_memory_allocated``). CPU: torch's
    allocations bypass Python's allocator, so tracemalloc cannot see them; the process's
    peak RSS is used instead, reset on entry through ``/proc/self/clear_refs`` on Linux
    (``vmhwm``), else ``ru_maxrss``, which is the peak since process start (``ru_maxrss``).
    ``peak_bytes - start_bytes`` is what the block added.
    """

    def __init__(self, device: Any = None):
        self.device = device
        self.method = ""
        self.start_bytes = self.peak_bytes = 0

    def _cuda(self) -> bool:
        return self.device is not None and str(self.device).startswith("cuda")

    def __enter__(self) -> "PeakMemory":
        if self._cuda():
            import torch

            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.method, self.start_bytes = "cuda", torch.cuda.memory_allocated(self.device)
            return self
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.method, self.start_bytes = "vmhwm", _proc_status_kb("VmHWM") * 1024
        except OSError:
            self.method, self.start_bytes = "ru_maxrss", _ru_maxrss_bytes()
        return self

    def __exit__(self, *exc) -> None:
        if self.method == "cuda":
            import torch

            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
        elif self.method == "vmhwm":
            self.peak_bytes = _proc_status_kb("VmHWM") * 1024
        else:
            self.peak_bytes = _ru_maxrss_bytes()

    @property
    def added_bytes(self) -> int:
        return max(self.peak_bytes - self.start_bytes, 0)


def _proc_status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise OSError(f"{key} not in /proc/self/status")


def _ru_maxrss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def cache_bytes(cache) -> int:
    """Bytes held by a KV cache's tensors, counting their whole storage (a view that hides part
    of a larger buffer still holds it). HF caches keep ``layers``; semoe's MoeLM cache lists."""
    if hasattr(cache, "layers"):
        tensors = [t for layer in cache.layers for t in (layer.keys, layer.values)]
    else:
        tensors = [*getattr(cache, "keys", []), *getattr(cache, "values", [])]
    return sum(t.untyped_storage().nbytes() for t in tensors if t is not None)
