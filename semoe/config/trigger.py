"""Settings of the triggered-retrieval methods (``semoe.generation.methods.dynamic``).

Names follow DRAGIN's configs so their published settings carry over. Options left as
``None`` fall back to the method's own default (DRAGIN's per-method choices) or to the
matching general setting, so one config can run several triggered methods side by side.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from semoe.config.base import Section

QueryFormulation = Literal[
    "direct", "forward_all", "current", "current_wo_wrong", "last_sentence", "last_n_tokens", "real_words"
]


class TriggerConfig(Section):
    query_formulation: QueryFormulation | None = Field(
        None,
        description="query on a trigger: direct (the question), forward_all (question + text so far), current "
        "(the triggering sentence; before a fixed step, the last accepted one), current_wo_wrong (it without "
        "the flagged tokens), last_sentence, last_n_tokens (of forward_all), real_words (DRAGIN's QFS: the "
        "most attended content words); None: the method's default (dragin real_words, token current_wo_wrong, "
        "fix-* current)",
    )
    check_real_words: bool = Field(
        True, description="only content words (stopword filter) can trigger or enter a QFS query"
    )
    retrieve_topk: int | None = Field(None, ge=1, description="passages per retrieval; None: retrieval.top_k")
    generate_max_length: int | None = Field(
        None, ge=1, description="generated-token budget; None: generation.max_new_tokens"
    )
    fix_length: int = Field(16, ge=1, description="fix-length-retrieval: tokens per retrieval window")
    hallucination_threshold: float | None = Field(
        None, description="token: mean/max/min of 1-p over a sentence; dragin: RIND score; None: method default"
    )
    sentence_solver: Literal["avg", "max", "min"] = Field(
        "avg", description="token: how 1-p is aggregated over a sentence"
    )
    retrieve_keep_top_k: int = Field(40, ge=1, description="real_words: content words kept in the query")
    last_n_tokens: int = Field(32, ge=1, description="last_n_tokens: query length in tokens")
    max_retrievals: int | None = Field(
        None, ge=0, description="retrievals per question; None: unlimited (length-bounded)"
    )
