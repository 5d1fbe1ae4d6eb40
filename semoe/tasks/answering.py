"""Prefect tasks of the evaluate flow. Inputs are configs, strings and plain rows —
never models or clients; models and searchers are memoised per worker process."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NONE

from semoe.config import DatasetConfig, SemoeConfig
from semoe.data import DataContext
from semoe.data.loading import load_examples
from semoe.data.schema import Example
from semoe.evaluation.answer_chunks import answer_chunk
from semoe.evaluation.configured import method_uses_retrieval
from semoe.evaluation.passage_sources import retriever_for
from semoe.evaluation.planning import WorkItem
from semoe.evaluation.scoring import expert_use, to_rows
from semoe.storage.artifacts import content_key
from semoe.tasks.common import hand_back, retry_on_transient_io
from semoe.tasks.gpu import gpu_slot
from semoe.tasks.interrupts import interruptible
from semoe.tasks.threads import use_threads


@task(
    name="load-examples", cache_policy=NONE, retries=2, retry_delay_seconds=2, retry_condition_fn=retry_on_transient_io
)
@interruptible
def load_examples_task(config: SemoeConfig, dataset: DatasetConfig) -> list[dict]:
    return [ex.as_dict() for ex in load_examples(dataset, DataContext.of(config))]


@task(
    name="answer-chunk",
    task_run_name="{method}-{dataset}-{first_id}",
    cache_policy=NONE,  # the results store is the record; resumes skip stored rows
)
@interruptible
def answer_chunk_task(
    config: SemoeConfig,
    run_id: str,
    dataset: str,
    method: str,
    examples: list[dict],
    answer_keys: list[str],
    corpus_key: str | None,
    first_id: str,
    shard_root: str | None = None,
) -> dict[str, list[dict]] | str:
    """The rows of a chunk's answers (predictions, retrievals, trigger events) and of the
    passage experts built on demand, handed back to the store writer (``hand_back``)."""

    rows, catalogue = _answer(config, run_id, dataset, method, examples, answer_keys, corpus_key)
    return hand_back({**rows, **catalogue}, shard_root, "answers-" + content_key(dataset, method, answer_keys))


def _answer(
    config: SemoeConfig,
    run_id: str,
    dataset: str,
    method: str,
    examples: list[dict],
    answer_keys: list[str],
    corpus_key: str | None,
) -> tuple[dict[str, list[dict]], dict[str, list[dict]]]:
    items = [Example.from_dict(e) for e in examples]
    item = WorkItem(dataset, method, items, answer_keys)
    retrieves = method_uses_retrieval(config, method)
    retriever = retriever_for(config, dataset, items, corpus_key) if retrieves else None
    use_threads(config)
    with gpu_slot(config):
        outputs, catalogue = answer_chunk(config, item, retriever)
    experts = expert_use(config, method)
    return to_rows(run_id, dataset, method, items, outputs, answer_keys, experts=experts), catalogue
