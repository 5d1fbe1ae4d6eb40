"""Prefect task around :class:`semoe.experts.provider.ExpertProvider`: augment and train
the experts of a chunk of passages (cached per passage, so a rerun trains nothing)."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NONE

from semoe import evaluation
from semoe.config import SemoeConfig
from semoe.data.schema import Passage
from semoe.tasks.gpu import gpu_slot
from semoe.tasks.interrupts import interruptible
from semoe.tasks.threads import use_threads


@task(name="build-experts", task_run_name="experts-{first_id}", cache_policy=NONE)
@interruptible
def build_experts_task(config: SemoeConfig, passages: list[dict], first_id: str, shard_root: str | None = None) -> dict:
    """{"trained": n, "rows": catalogue rows}; with ``shard_root`` (a worker process) the
    rows are left there as a Parquet shard instead and "shard" is its path."""
    use_threads(config)
    with gpu_slot(config):
        ctx = evaluation.method_context(config)
        ctx.experts.ensure([Passage(**p) for p in passages])
    rows = ctx.experts.drain_rows()
    if shard_root is None:
        return {"trained": ctx.experts.trained, "rows": rows}
    from semoe.storage.artifacts import content_key
    from semoe.storage.shards import write_shard

    key = content_key([p["id"] for p in passages])
    return {"trained": ctx.experts.trained, "shard": str(write_shard(shard_root, f"experts-{key}", rows))}
