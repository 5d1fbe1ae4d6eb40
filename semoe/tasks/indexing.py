"""Prefect task around :func:`semoe.indexing.build_index`."""

from __future__ import annotations

from prefect import task

from semoe.config import SemoeConfig
from semoe.indexing import build_index
from semoe.tasks.common import retry_on_transient_io
from semoe.tasks.interrupts import interruptible


def index_cache_key(context, parameters) -> str:
    """Cache by what the index is made of: backend + corpus content key (strings only)."""
    return f"semoe-index-{parameters['config'].retrieval.backend}-{parameters['corpus_key']}"


@task(
    name="build-index",
    cache_key_fn=index_cache_key,
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=retry_on_transient_io,
)
@interruptible
def build_index_task(config: SemoeConfig, corpus_key: str) -> dict:
    info = build_index(config)
    if info.corpus_key != corpus_key:
        raise RuntimeError(f"corpus changed while indexing (expected key {corpus_key}, got {info.corpus_key})")
    return info.as_dict()
