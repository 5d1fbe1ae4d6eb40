"""GPU concurrency: one Prefect global concurrency limit per GPU, named ``gpu:<worker>:<device>``.

Every model-using task holds a slot of the limit of the GPU its model sits on, so however many
flow runs a worker box starts, each GPU runs at most ``gpu.slots`` model tasks at once. This
module decides the names (no Prefect); :mod:`semoe.tasks.gpu` creates and acquires the limits.
"""

from __future__ import annotations

import os
import socket

from semoe.config import WORKER_ENV, GpuConfig


def worker_name(cfg: GpuConfig) -> str:
    return cfg.worker or os.environ.get(WORKER_ENV) or socket.gethostname()


def model_device(device: str, cuda_available: bool) -> str | None:
    """The physical CUDA device the model is placed on (None on CPU).

    ``cuda:N`` is the N-th *visible* device; ``CUDA_VISIBLE_DEVICES`` maps it to the physical
    id, so two processes pinned to different GPUs get different limits.
    """
    if device == "auto":
        device = "cuda" if cuda_available else "cpu"
    if not device.startswith("cuda"):
        return None
    logical = int(device.partition(":")[2] or 0)
    visible = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return visible[logical] if logical < len(visible) else str(logical)


def gpu_limit_names(cfg: GpuConfig, device: str, cuda_available: bool) -> list[str]:
    """Names of the limits a model task must hold: [] on CPU unless ``limit: on``."""
    if cfg.limit == "off":
        return []
    physical = model_device(device, cuda_available)
    if physical is None and cfg.limit == "auto":
        return []
    return [f"gpu:{worker_name(cfg)}:{physical or 'cpu'}"]
