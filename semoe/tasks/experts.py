"""Prefect task around :class:`semoe.experts.provider.ExpertProvider`: augment and train
the experts of a chunk of passages (cached per passage, so a rerun trains nothing)."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NONE

from semoe import evaluation
from semoe.config import SemoeConfig
from semoe.data.schema import Passage
from semoe.generation.methods.parametric import ExpertParams
from semoe.tasks.gpu import gpu_slot
from semoe.tasks.interrupts import interruptible


@task(name="build-experts", task_run_name="experts-{first_id}", cache_policy=NONE)
@interruptible
def build_experts_task(
    config: SemoeConfig, params: ExpertParams, passages: list[dict], first_id: str, shard_root: str | None = None
) -> dict:
    """{"trained": n, "rows": catalogue rows} of the experts of ``passages`` made with
    ``params`` (augment + experts settings); with ``shard_root`` (a worker process) the rows
    are left there as a Parquet shard instead and "shard" is its path."""
    with gpu_slot(config):
        provider = evaluation.expert_provider(config, evaluation.load_lm(config), params)
        provider.ensure([Passage(**p) for p in passages])
    rows = provider.drain_rows()
    if shard_root is None:
        return {"trained": provider.trained, "rows": rows}
    from semoe.storage.artifacts import content_key
    from semoe.storage.shards import write_shard

    key = content_key([p["id"] for p in passages], params.identity())
    return {"trained": provider.trained, "shard": str(write_shard(shard_root, f"experts-{key}", rows))}
