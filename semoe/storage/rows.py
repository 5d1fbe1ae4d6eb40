"""Typed rows of the results store: one frozen dataclass per table of ``semoe/storage/schema.py``,
fields in the table's column order (migrations append columns, so later columns come last).

Every producer builds its rows through these classes, so a column added, renamed or dropped
by a migration is one edit here (``tests/storage/test_rows.py`` checks each class against its migrated
table), never a silently missing column in one of the producers. Rows travel as plain dicts
(``Row.as_dict``): Prefect task results, Parquet shards and the store's keyed writes.
Pure Python: no DuckDB, polars or Prefect import.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from typing import ClassVar, Mapping, Sequence, TypeVar

from semoe.storage.errors import StoreError

R = TypeVar("R", bound="Row")


class Row:
    """Base of the table rows; ``TABLE`` names the table a subclass is a row of."""

    TABLE: ClassVar[str]

    @classmethod
    def columns(cls) -> tuple[str, ...]:
        """The table's column names, in column order."""
        return tuple(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]

    def as_dict(self) -> dict:
        """Column → value, every column, in column order (lists are not copied)."""
        return {name: getattr(self, name) for name in self.columns()}

    @classmethod
    def from_dict(cls: type[R], row: Mapping) -> R:
        """The row of a dict with exactly the table's columns (a stored row, a shard's row);
        a ``StoreError`` naming the table and the columns that are missing or unknown."""
        missing = [c for c in cls.columns() if c not in row]
        unknown = [c for c in row if c not in cls.columns()]
        if missing or unknown:
            raise StoreError(
                f"not a row of {cls.TABLE}: "
                + "; ".join(
                    f"{what} columns {cols}" for what, cols in (("missing", missing), ("unknown", unknown)) if cols
                )
            )
        return cls(**row)

    def replace(self: R, **changes) -> R:
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


def rekeyed(table: str, rows: Sequence[Mapping], **key) -> list[dict]:
    """Stored ``rows`` of ``table`` (as ``SELECT *`` returns them) with the columns ``key``
    replaced, e.g. an earlier run's answers copied into this run."""
    cls = ROWS[table]
    return [cls.from_dict(r).replace(**key).as_dict() for r in rows]


_ROW = dict(frozen=True, kw_only=True)  # kw_only: column order may put defaults before required fields


@dataclass(**_ROW)
class RunRow(Row):
    TABLE: ClassVar[str] = "runs"
    run_id: str
    name: str | None
    config_hash: str
    code_version: str
    config_json: str  # JSON text of the resolved config
    status: str
    started_at: datetime | None
    finished_at: datetime | None = None
    error: str | None = None
    n_predictions: int | None = None


@dataclass(**_ROW)
class PredictionRow(Row):
    """One answer of one method to one question. ``base_model``, ``expert_rank`` and
    ``expert_targets`` are the method's passage-expert settings (what fixes an expert's
    size, see the ``cost_by_method`` view); NULL for methods without experts.
    ``answer_marker_found``: the reply has the "the answer is" its prediction follows
    (``semoe.generation.answer.has_answer_marker``); False: the prediction is the reply's
    first sentence."""

    TABLE: ClassVar[str] = "predictions"
    run_id: str
    dataset: str
    example_id: str
    method: str
    question: str | None
    question_type: str | None
    golds: list[str] | None
    prediction: str | None
    raw_output: str | None
    em: float | None
    f1: float | None
    recall: float | None
    retrieval_count: int | None
    generation_count: int | None
    prompt_tokens: int | None
    generated_tokens: int | None
    latency_s: float | None
    latency_retrieve_s: float | None
    latency_generate_s: float | None
    extra: str | None  # JSON text: what the method reports beyond the columns and per-example tables
    created_at: datetime | None
    hallucination_events: int | None
    sentences: int | None
    latency_experts_s: float | None
    answer_key: str | None
    answered_in: str | None
    truncated: bool | None
    error: str | None
    base_model: str | None
    expert_rank: int | None
    expert_targets: list[str] | None
    answer_marker_found: bool | None  # NULL: an error row, or a row stored before migration 7
    recall_all: float | None  # recall counting no retrieval as 0 (``evaluation.scoring.score``)


@dataclass(**_ROW)
class RetrievalRow(Row):
    TABLE: ClassVar[str] = "retrievals"
    run_id: str
    dataset: str
    example_id: str
    method: str
    step: int
    rank: int
    query: str | None
    passage_id: str | None
    title: str | None
    score: float | None


@dataclass(**_ROW)
class MetricRow(Row):
    """Written by ``ResultStore.compute_metrics`` (means in SQL, intervals by ``semoe.stats``);
    the class keeps the columns typed. ``semoe.storage.columns`` says what each one means."""

    TABLE: ClassVar[str] = "metrics"
    run_id: str
    dataset: str
    method: str
    n: int | None
    em: float | None
    f1: float | None
    recall_retrieved: float | None
    retrievals_per_question: float | None
    seconds_per_question: float | None
    computed_at: datetime | None
    errors: int | None
    truncated: int | None
    answer_marker_missing: int | None
    recall_all: float | None
    em_lo: float | None
    em_hi: float | None
    f1_lo: float | None
    f1_hi: float | None
    recall_retrieved_lo: float | None
    recall_retrieved_hi: float | None
    recall_all_lo: float | None
    recall_all_hi: float | None


@dataclass(**_ROW)
class MetricByTypeRow(Row):
    """The ``metrics`` of one question type (questions with a type only); written with them."""

    TABLE: ClassVar[str] = "metrics_by_type"
    run_id: str
    dataset: str
    method: str
    question_type: str
    n: int | None
    em: float | None
    f1: float | None
    recall_retrieved: float | None
    recall_all: float | None
    errors: int | None
    em_lo: float | None
    em_hi: float | None
    f1_lo: float | None
    f1_hi: float | None
    recall_retrieved_lo: float | None
    recall_retrieved_hi: float | None
    recall_all_lo: float | None
    recall_all_hi: float | None
    computed_at: datetime | None


@dataclass(**_ROW)
class IndexRow(Row):
    TABLE: ClassVar[str] = "indexes"
    corpus_key: str
    backend: str
    passages: int | None
    seconds: float | None
    passages_per_s: float | None
    location: str | None
    built_at: datetime | None
    skipped_rows: int | None


@dataclass(**_ROW)
class TriggerEventRow(Row):
    """One retrieval trigger of a triggered method (DRAGIN family, SEMoE); stored only here,
    never again in ``predictions.extra``."""

    TABLE: ClassVar[str] = "trigger_events"
    run_id: str
    dataset: str
    example_id: str
    method: str
    step: int
    token_index: int | None
    token: str | None
    score: float | None
    query: str | None
    passage_ids: list[str] | None


@dataclass(**_ROW)
class ExpertRow(Row):
    TABLE: ClassVar[str] = "experts"
    expert_key: str
    passage_id: str
    path: str
    base_model: str
    rank: int
    alpha: float
    lr: float
    epochs: int
    targets: list[str]
    loss_before: float | None
    loss_after: float | None
    seconds: float | None
    bytes: int | None
    sha256: str | None


@dataclass(**_ROW)
class AugmentationRow(Row):
    TABLE: ClassVar[str] = "augmentations"
    passage_hash: str
    passage_id: str | None
    model: str
    prompt_version: str
    status: str
    rewrites: list[str] | None
    qa: str | None  # JSON text: [{question, answer, full_answer}]
    qa_count: int | None
    attempts: int | None
    reason: str | None
    seconds: float | None
    created_at: datetime | None


@dataclass(**_ROW)
class RoutingRunRow(Row):
    """One routing-policy cell (run × model × policy × mode). The context columns
    (``semoe.routing.tables.ROUTING_RUN_CONTEXT``) and the identity columns ``cell_key`` /
    ``computed_in`` (``semoe.identity``) default to NULL: the caller knows them."""

    TABLE: ClassVar[str] = "routing_runs"
    run_id: str
    model: str
    model_key: str | None = None
    policy_key: str
    policy: str
    policy_label: str | None = None
    setting: str | None = None
    k: int | None = None
    policy_params: str | None  # JSON text
    mode: str
    texts: int | None
    tokens: int | None
    nll: float | None
    perplexity: float | None
    eval_seconds: float | None
    tokens_per_s: float | None
    decode_tokens_per_s: float | None
    peak_memory_bytes: int | None
    memory_method: str | None
    kv_cache_bytes: int | None
    experts_per_token: float | None
    experts_std: float | None
    floor_rate: float | None
    ceiling_rate: float | None
    qa_dataset: str | None = None
    qa_n: int | None = None
    qa_em: float | None = None
    qa_f1: float | None = None
    qa_note: str | None = None
    heatmap_path: str | None
    created_at: datetime | None
    cell_key: str | None = None
    computed_in: str | None = None
    qa_method: str | None = None  # label of routing.qa.method
    qa_retrieval_rate: float | None = None  # share of QA questions answered with retrieval
    qa_tokens_per_s: float | None = None  # QA: new tokens per second of generation


@dataclass(**_ROW)
class RoutingLayerStatRow(Row):
    TABLE: ClassVar[str] = "routing_layer_stats"
    run_id: str
    model: str
    policy_key: str
    mode: str
    layer: int
    module: str | None
    decoder_layer: int | None
    num_experts: int | None
    tokens: int | None
    experts_mean: float | None
    experts_std: float | None
    floor_rate: float | None
    ceiling_rate: float | None
    overlap: float | None
    k_histogram: list[int] | None
    expert_counts: list[int] | None


@dataclass(**_ROW)
class MoeLMTrainingRow(Row):
    TABLE: ClassVar[str] = "moe_lm_training"
    model_key: str
    step: int
    loss: float
    aux_loss: float
    lr: float
    seconds: float


@dataclass(**_ROW)
class TranslatorTrainingRow(Row):
    """One step of a parameter translator's training (``semoe.experts.translator``)."""

    TABLE: ClassVar[str] = "translator_training"
    checkpoint_key: str
    step: int
    epoch: int
    passage_id: str
    loss: float
    mse: float
    lm: float
    kl: float
    seconds: float


ROWS: dict[str, type[Row]] = {
    cls.TABLE: cls
    for cls in (
        RunRow,
        PredictionRow,
        RetrievalRow,
        MetricRow,
        MetricByTypeRow,
        IndexRow,
        TriggerEventRow,
        ExpertRow,
        AugmentationRow,
        RoutingRunRow,
        RoutingLayerStatRow,
        MoeLMTrainingRow,
        TranslatorTrainingRow,
    )
}
"""Table name → its row class."""


def as_dicts(table: str, rows: Sequence[Row | Mapping]) -> list[dict]:
    """``rows`` of ``table`` as dicts for the writer: typed rows (which must be of ``table``)
    as ``as_dict``, dicts as they are."""
    out = []
    for row in rows:
        if isinstance(row, Row):
            if row.TABLE != table:
                raise StoreError(f"a {type(row).__name__} (a row of {row.TABLE}) given as a row of {table}")
            row = row.as_dict()
        out.append(row)
    return out
