"""Per-GPU global concurrency limits: names per worker and physical device, created
idempotently, held strictly around model work (against the ephemeral Prefect API)."""

from __future__ import annotations

import pytest

from semoe.concurrency import gpu_limit_names, model_device
from semoe.config import GpuConfig, SemoeConfig


def test_limit_names_follow_the_physical_device(monkeypatch):
    monkeypatch.delenv("SEMOE_WORKER_NAME", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    gpu = GpuConfig(worker="box")
    assert model_device("cuda", True) == "2" and model_device("cuda:1", True) == "3"
    assert gpu_limit_names(gpu, "auto", cuda_available=True) == ["gpu:box:2"]
    assert gpu_limit_names(gpu, "cuda:1", cuda_available=True) == ["gpu:box:3"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert gpu_limit_names(gpu, "cuda:1", cuda_available=True) == ["gpu:box:1"]
    # CPU: no limit unless forced; "off" never
    assert gpu_limit_names(gpu, "auto", cuda_available=False) == []
    assert gpu_limit_names(gpu, "cpu", cuda_available=True) == []
    assert gpu_limit_names(GpuConfig(limit="on", worker="box"), "cpu", False) == ["gpu:box:cpu"]
    assert gpu_limit_names(GpuConfig(limit="off", worker="box"), "cuda", True) == []
    monkeypatch.setenv("SEMOE_WORKER_NAME", "from-env")
    assert gpu_limit_names(GpuConfig(), "cuda", True) == ["gpu:from-env:0"]


def test_gpu_settings_are_not_part_of_the_run_identity():
    assert SemoeConfig(gpu={"limit": "on", "slots": 3}).config_hash() == SemoeConfig().config_hash()


def _config(worker: str, **gpu) -> SemoeConfig:
    return SemoeConfig(model={"device": "cpu"}, gpu={"limit": "on", "worker": worker, **gpu})


def _limit(name: str):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_global_concurrency_limit_by_name(name)


def test_limit_is_created_once_acquired_and_released(prefect_api):
    from semoe.tasks.gpu import ensure_gpu_limits, gpu_slot

    cfg = _config("test-box", slots=2)
    assert ensure_gpu_limits(cfg) == ["gpu:test-box:cpu"]
    assert ensure_gpu_limits(_config("test-box", slots=5)) == ["gpu:test-box:cpu"]  # twice: fine, size kept
    assert (_limit("gpu:test-box:cpu").limit, _limit("gpu:test-box:cpu").active_slots) == (2, 0)
    with gpu_slot(cfg) as names:
        assert names == ["gpu:test-box:cpu"]
        assert _limit("gpu:test-box:cpu").active_slots == 1
    assert _limit("gpu:test-box:cpu").active_slots == 0
    with gpu_slot(SemoeConfig(model={"device": "cpu"})) as names:  # default on CPU: no limit at all
        assert names == []


def test_acquisition_is_strict_when_the_limit_is_missing(prefect_api, monkeypatch):
    from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError
    from prefect.exceptions import ObjectNotFound

    import semoe.tasks.gpu as gpu_tasks

    monkeypatch.setattr(gpu_tasks, "ensure_gpu_limits", gpu_tasks.limit_names)  # names, but nothing created
    with pytest.raises(ConcurrencySlotAcquisitionError, match="gpu:never-created:cpu"):
        with gpu_tasks.gpu_slot(_config("never-created")):
            pytest.fail("ran without holding the GPU limit")
    with pytest.raises(ObjectNotFound):
        _limit("gpu:never-created:cpu")
