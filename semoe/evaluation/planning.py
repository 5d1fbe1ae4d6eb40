"""Run planning and answer reuse: the chunks of (dataset, method, questions) a QA run still
needs, each question with the key of its answer (``identity.answer_key``), and the copy of
answers stored under the same keys by any run, re-scored against this run's golds."""

from __future__ import annotations

from dataclasses import dataclass, field

from semoe import identity
from semoe.config import SemoeConfig
from semoe.data.schema import Example
from semoe.evaluation.passage_experts import translator_keys
from semoe.evaluation.passage_sources import provided_datasets
from semoe.evaluation.scoring import score
from semoe.generation import METHODS
from semoe.storage.rows import rekeyed


@dataclass
class WorkItem:
    dataset: str
    method: str  # the method's label
    examples: list[Example]
    answer_keys: list[str] = field(default_factory=list)  # one per example (identity.answer_key)


def plan_work(
    cfg: SemoeConfig,
    examples_by_dataset: dict[str, list[Example]],
    done: set[tuple[str, str, str]],
    corpus_key: str | None = None,
) -> list[WorkItem]:
    """Chunks of (dataset, method, examples) not yet stored, in store-commit-sized pieces,
    each example with the identity of its answer."""
    size = cfg.store.write_every
    provided = provided_datasets(cfg, examples_by_dataset)
    items: list[WorkItem] = []
    translators = translator_keys(cfg, corpus_key)
    for spec in cfg.methods:
        label, retrieves = spec.display_name, METHODS.get(spec.name).uses_retrieval
        for dataset, examples in examples_by_dataset.items():
            own = retrieves and dataset in provided  # the question's contexts, not the corpus, decide the answer
            scope = identity.answer_scope(
                cfg, spec, None if own else corpus_key, cfg.dataset(dataset), translators.get(label)
            )
            todo = [ex for ex in examples if (dataset, ex.id, label) not in done]
            for i in range(0, len(todo), size):
                chunk = todo[i : i + size]
                keys = [identity.answer_key(scope, ex.question, ex.contexts if own else None) for ex in chunk]
                items.append(WorkItem(dataset, label, chunk, keys))
    return items


def split_reusable(items: list[WorkItem], stored: set[str]) -> tuple[list[WorkItem], list[WorkItem]]:
    """(items whose answers are all stored under their answer keys, items still to answer),
    splitting a chunk where only some answers are stored."""
    reuse: list[WorkItem] = []
    answer: list[WorkItem] = []
    for item in items:
        for target, keep in ((reuse, True), (answer, False)):
            pairs = [(ex, k) for ex, k in zip(item.examples, item.answer_keys, strict=True) if (k in stored) == keep]
            if pairs:
                target.append(WorkItem(item.dataset, item.method, [p[0] for p in pairs], [p[1] for p in pairs]))
    return reuse, answer


def reuse_stored_answers(
    cfg: SemoeConfig, store, run_id: str, examples: dict[str, list[Example]], corpus_key: str | None
) -> tuple[list[WorkItem], int]:
    """Plan the answers ``run_id`` still lacks, copy (re-scored) those stored under the same
    answer keys by any run, and return (the chunks still to answer, the number copied)."""
    planned = plan_work(cfg, examples, store.done_keys(run_id), corpus_key)
    stored = store.stored_answers([k for item in planned for k in item.answer_keys])
    reusable, todo = split_reusable(planned, set(stored))
    for item in reusable:
        store.write_predictions(reused_rows(run_id, item, stored))
    return todo, sum(len(i.examples) for i in reusable)


def reused_rows(run_id: str, item: WorkItem, stored: dict[str, dict[str, list[dict]]]) -> dict[str, list[dict]]:
    """Rows of ``item`` copied from stored answers with the same answer keys (``stored``:
    answer key → the tables of that answer, as ``ResultStore.stored_answers`` returns),
    re-keyed to this run and re-scored against this run's golds. The answer key covers the
    method's resolved params and the model, so the copied expert settings are this run's."""
    tables: dict[str, list[dict]] = {"predictions": [], "retrievals": [], "trigger_events": []}
    for ex, answer_key in zip(item.examples, item.answer_keys, strict=True):
        src = stored[answer_key]
        key = {"run_id": run_id, "dataset": item.dataset, "example_id": ex.id, "method": item.method}
        pred = src["predictions"][0]
        hits = sorted(src["retrievals"], key=lambda r: (r["step"], r["rank"]))
        scores = score(
            ex,
            pred["prediction"],
            [h["passage_id"] for h in hits],
            [h["title"] for h in hits],
            bool(pred["retrieval_count"]),
        )
        tables["predictions"] += rekeyed(
            "predictions", [pred], **key, **scores, question=ex.question, question_type=ex.type, golds=list(ex.answers)
        )
        for table in ("retrievals", "trigger_events"):
            tables[table] += rekeyed(table, src[table], **key)
    return tables
