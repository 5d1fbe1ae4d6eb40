"""Scoring and rows: EM, F1 and recall@k of one output, and the rows of ``predictions`` and
its per-example tables (``retrievals``, ``trigger_events``) built from a method's outputs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Mapping, Sequence

from semoe.config import SemoeConfig
from semoe.data.schema import Example
from semoe.generation.answer import has_answer_marker
from semoe.generation.base import MethodOutput, build_method
from semoe.metrics import exact_match, f1_score, recall_at_k
from semoe.storage.results import utcnow
from semoe.storage.rows import PredictionRow, RetrievalRow, TriggerEventRow


def score(
    ex: Example, prediction: str | None, hit_ids: Sequence[str], hit_titles: Sequence[str], retrieved: bool
) -> dict:
    """EM, F1 (official SQuAD normalisation, best over the golds) and recall@k of the gold
    passages of one prediction: ``recall`` None when the answer retrieved nothing,
    ``recall_all`` 0 then (both None when the question names no gold passage); no prediction
    (an error row) scores 0."""
    recall = recall_at_k(list(hit_ids), list(hit_titles), ex.gold_passage_ids, ex.gold_titles)
    return {
        "em": 0.0 if prediction is None else exact_match(prediction, ex.answers),
        "f1": 0.0 if prediction is None else f1_score(prediction, ex.answers),
        "recall": recall if retrieved else None,
        "recall_all": recall,  # no passage retrieved: 0 of the golds found
    }


# Keys of ``MethodOutput.extra`` stored in columns or tables of their own, never again in ``extra``.
STORED_APART = ("trigger_events", "hallucination_events", "sentences")


@dataclass(frozen=True)
class ExpertUse:
    """What fixes the size of a method's passage experts: the ``predictions`` columns
    ``base_model``, ``expert_rank`` and ``expert_targets`` (joined with ``experts`` by the
    ``cost_by_method`` view)."""

    base_model: str
    rank: int
    targets: tuple[str, ...]


def expert_use(cfg: SemoeConfig, label: str) -> ExpertUse | None:
    """The expert settings of the method labelled ``label`` (its resolved params), None for a
    method without passage expert files (none, or translated ones)."""
    method = build_method(cfg.method(label), cfg)
    # Translated experts are never files: joining them with the trained ones of the same
    # passages would charge the method their bytes.
    if not method.uses_experts or method.params.experts.source == "translator":
        return None
    experts = method.params.experts
    return ExpertUse(cfg.model.spec, experts.rank, tuple(experts.targets))


def trigger_event_rows(run_id: str, dataset: str, example_id: str, method: str, extra: Mapping | None) -> list[dict]:
    """``trigger_events`` rows (``semoe.storage.rows.TriggerEventRow``) from a method output's
    ``extra`` (``MethodOutput.extra``); methods without triggers give none. The table is where
    trigger events are stored: ``predictions.extra`` does not keep them."""
    return [
        TriggerEventRow(
            run_id=run_id,
            dataset=dataset,
            example_id=example_id,
            method=method,
            step=int(e["step"]),
            token_index=e.get("token_index"),
            token=e.get("token"),
            score=None if e.get("score") is None else float(e["score"]),
            query=e.get("query"),
            passage_ids=[str(p) for p in e.get("passage_ids", [])],
        ).as_dict()
        for e in (extra or {}).get("trigger_events", [])
    ]


def to_rows(
    run_id: str,
    dataset: str,
    method: str,
    examples: Sequence[Example],
    outputs: Sequence[MethodOutput],
    answer_keys: Sequence[str] | None = None,
    *,
    experts: ExpertUse | None,
) -> dict[str, list[dict]]:
    """Score outputs and build the rows of ``predictions`` and its per-example tables;
    ``answer_keys`` (one per example, ``semoe.identity.answer_key``) make them reusable;
    ``experts`` is the method's ``expert_use`` (required: a forgotten setting would leave the
    method's experts out of the cost view).

    An output with ``error`` (e.g. a question over the context) is stored with a NULL
    prediction and the reason, and scored em = f1 = 0: it stays in n, so accuracy is not
    inflated by leaving hard questions out, and metrics count it under ``errors``.
    ``answer_marker_found``: whether the reply has the "the answer is" its prediction was
    taken after (``has_answer_marker``; NULL for an error row); metrics count the replies
    without it under ``answer_marker_missing``."""
    now = utcnow()
    tables: dict[str, list[dict]] = {"predictions": [], "retrievals": [], "trigger_events": []}
    keys = [None] * len(examples) if answer_keys is None else answer_keys
    for ex, out, answer_key in zip(examples, outputs, keys, strict=True):
        hits = [h for step in out.retrievals for h in step.hits]
        key = {"run_id": run_id, "dataset": dataset, "example_id": ex.id, "method": method}
        failed = out.error is not None
        extra = {k: v for k, v in out.extra.items() if k not in STORED_APART}
        tables["predictions"].append(
            PredictionRow(
                **key,
                question=ex.question,
                question_type=ex.type,
                golds=list(ex.answers),
                prediction=None if failed else out.prediction,
                raw_output=None if failed else out.raw_output,
                **score(
                    ex,
                    None if failed else out.prediction,
                    [h.passage.id for h in hits],
                    [h.passage.title for h in hits],
                    bool(out.retrievals),
                ),
                truncated=out.truncated,
                error=out.error,
                answer_marker_found=None if failed else has_answer_marker(out.raw_output),
                retrieval_count=len(out.retrievals),
                generation_count=out.generation_count,
                prompt_tokens=out.prompt_tokens,
                generated_tokens=out.generated_tokens,
                hallucination_events=out.extra.get("hallucination_events"),
                sentences=out.extra.get("sentences"),
                latency_s=sum(out.latency.values()),
                latency_retrieve_s=out.latency.get("retrieve", 0.0),
                latency_generate_s=out.latency.get("generate", 0.0),
                latency_experts_s=out.latency.get("experts", 0.0),
                extra=json.dumps(extra, sort_keys=True, default=str),
                answer_key=answer_key,
                answered_in=run_id,
                created_at=now,
                base_model=experts.base_model if experts else None,
                expert_rank=experts.rank if experts else None,
                expert_targets=list(experts.targets) if experts else None,
            ).as_dict()
        )
        tables["retrievals"].extend(
            RetrievalRow(
                **key,
                step=step.step,
                rank=h.rank,
                query=step.query,
                passage_id=h.passage.id,
                title=h.passage.title,
                score=float(h.score),
            ).as_dict()
            for step in out.retrievals
            for h in step.hits
        )
        tables["trigger_events"].extend(trigger_event_rows(run_id, dataset, ex.id, method, out.extra))
    return tables
