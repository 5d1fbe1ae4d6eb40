"""Prefect side of :mod:`semoe.concurrency`: create the per-GPU global concurrency limits and
hold a slot around model-using work.

Acquisition is ``strict``: without it Prefect only warns and runs unlimited when a limit is
missing, which would silently oversubscribe a GPU.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from semoe.concurrency import gpu_limit_names
from semoe.config import SemoeConfig
from semoe.models.loading import dummy_seed


def limit_names(config: SemoeConfig) -> list[str]:
    """This process's limit names for the configured model device ([] on CPU unless forced)."""

    if config.gpu.limit == "off" or dummy_seed(config.model.spec) is not None:  # the dummy model uses no device
        return []
    cuda = False
    if config.model.device == "auto":
        import torch

        cuda = torch.cuda.is_available()
    return gpu_limit_names(config.gpu, config.model.device, cuda)


def ensure_gpu_limits(config: SemoeConfig) -> list[str]:
    """Create the limits that are missing; an existing one keeps its size (operators may tune it)."""
    names = limit_names(config)
    if not names:
        return names
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists

    with get_client(sync_client=True) as client:
        for name in names:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=config.gpu.slots))
            except ObjectAlreadyExists:
                pass
    return names


@contextmanager
def gpu_slot(config: SemoeConfig) -> Iterator[list[str]]:
    """Hold one slot of this process's GPU limit. The limit is ensured here too, because a
    task may run on another host than its flow (a Dask worker) and so name another GPU."""
    names = ensure_gpu_limits(config)
    if not names:
        yield names
        return
    from prefect.concurrency.sync import concurrency

    with concurrency(names, occupy=1, strict=True):
        yield names
