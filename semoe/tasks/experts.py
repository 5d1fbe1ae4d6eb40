"""Prefect task around :class:`semoe.experts.provider.ExpertProvider`: augment and train
the experts of a chunk of passages (cached per passage, so a rerun trains nothing)."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NONE

from semoe import evaluation
from semoe.config import SemoeConfig
from semoe.data.schema import Passage


@task(name="build-experts", task_run_name="experts-{first_id}", cache_policy=NONE)
def build_experts_task(config: SemoeConfig, passages: list[dict], first_id: str) -> dict:
    ctx = evaluation.method_context(config)
    ctx.experts.ensure([Passage(**p) for p in passages])
    return {"trained": ctx.experts.trained, "rows": ctx.experts.drain_rows()}
