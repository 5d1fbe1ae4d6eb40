"""Prefect tasks of the evaluate flow. Inputs are configs, strings and plain rows —
never models or clients; models and searchers are memoised per worker process."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NONE

from semoe import evaluation
from semoe.config import DatasetConfig, SemoeConfig
from semoe.data.loading import load_examples
from semoe.data.schema import Example
from semoe.tasks.common import retry_on_transient_io
from semoe.tasks.gpu import gpu_slot
from semoe.tasks.interrupts import interruptible
from semoe.tasks.threads import use_threads


@task(name="load-examples", cache_policy=NONE, retries=2, retry_delay_seconds=2, retry_condition_fn=retry_on_transient_io)
@interruptible
def load_examples_task(config: SemoeConfig, dataset: DatasetConfig) -> list[dict]:
    return [ex.as_dict() for ex in load_examples(dataset, evaluation.data_context(config))]


@task(
    name="answer-chunk",
    task_run_name="{method}-{dataset}-{first_id}",
    cache_policy=NONE,  # the results store is the record; resumes skip stored rows
)
@interruptible
def answer_chunk_task(
    config: SemoeConfig, run_id: str, dataset: str, method: str, examples: list[dict], answer_keys: list[str],
    corpus_key: str | None, first_id: str,
) -> tuple[dict[str, list[dict]], dict[str, list[dict]]]:
    """(per-example rows, catalogue rows of experts built on demand) for the store writer."""
    return _answer(config, run_id, dataset, method, examples, answer_keys, corpus_key)


@task(name="answer-shard", task_run_name="{method}-{dataset}-{first_id}", cache_policy=NONE)
@interruptible
def answer_shard_task(
    config: SemoeConfig, run_id: str, dataset: str, method: str, examples: list[dict], answer_keys: list[str],
    corpus_key: str | None, first_id: str, shard_root: str,
) -> str:
    """Answer a chunk on a worker process and leave its rows as a Parquet shard under
    ``shard_root`` (the flow process ingests it); returns the shard's path."""
    from semoe.storage.artifacts import content_key
    from semoe.storage.shards import write_shard

    rows, catalogue = _answer(config, run_id, dataset, method, examples, answer_keys, corpus_key)
    key = content_key(dataset, method, [e["id"] for e in examples])
    return str(write_shard(shard_root, f"answers-{key}", {**rows, **catalogue}))


def _answer(
    config: SemoeConfig, run_id: str, dataset: str, method: str, examples: list[dict], answer_keys: list[str],
    corpus_key: str | None,
) -> tuple[dict[str, list[dict]], dict[str, list[dict]]]:
    from semoe.indexing import open_retriever

    items = [Example.from_dict(e) for e in examples]
    item = evaluation.WorkItem(dataset, method, items, answer_keys)
    retriever = open_retriever(config, corpus_key) if corpus_key else None
    use_threads(config)
    with gpu_slot(config):
        ctx = evaluation.method_context(config, retriever)
        outputs = evaluation.answer_chunk(item, ctx)
    return evaluation.to_rows(run_id, dataset, method, items, outputs, answer_keys), ctx.experts.drain_rows()
