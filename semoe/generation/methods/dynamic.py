"""Triggered-retrieval methods (the DRAGIN family); the engine is semoe.generation.triggered.engine.

Per-method defaults follow DRAGIN's published configs where the method has one (DRAGIN:
real_words queries, threshold 1.2; FLARE: the sentence without its flagged tokens, avg 1-p
> 0.1); the fixed-interval baselines query with the previous step, as DRAGIN's paper
describes them (its code queries with the question; set ``query_formulation: direct``).
"""

from __future__ import annotations

from typing import Sequence

from semoe.config import TriggerConfig
from semoe.data.schema import Example
from semoe.generation import METHODS
from semoe.generation.base import Method, MethodContext, MethodOutput
from semoe.generation.triggered.engine import Settings, TriggeredGenerator
from semoe.generation.triggered.kv_session import default_forward
from semoe.generation.triggered.triggers import (
    FixLengthTrigger,
    FixSentenceTrigger,
    RindTrigger,
    TokenProbabilityTrigger,
)


class TriggeredMethod(Method):
    """Answers each question with a TriggeredGenerator built from ``trigger``; subclasses
    (e.g. expert insertion) override ``knowledge`` or ``forward``. Params: the ``trigger:``
    section's fields, per method."""

    uses_retrieval = True
    needs_weights = True  # token probabilities and attention
    Params = TriggerConfig
    defaults_from = {"": "trigger"}
    default_query: str = "current"
    default_threshold: float | None = None

    def trigger(self, tc: TriggerConfig):
        raise NotImplementedError

    def generates_queries(self) -> bool:
        return (self.params.query_formulation or self.default_query) != "direct"

    def threshold(self, tc: TriggerConfig) -> float:
        return self.default_threshold if tc.hallucination_threshold is None else tc.hallucination_threshold

    def knowledge(self, ctx: MethodContext):
        return None

    def forward(self, ctx: MethodContext):
        return default_forward

    def settings(self, ctx: MethodContext):
        tc, g = self.params, ctx.generation
        max_length = tc.generate_max_length or g.max_new_tokens
        return Settings(
            query_formulation=tc.query_formulation or self.default_query,
            retrieve_topk=tc.retrieve_topk or ctx.retrieval.top_k,
            generate_max_length=max_length,
            few_shot=g.few_shot,
            chain_of_thought=g.chain_of_thought,
            check_real_words=tc.check_real_words,
            retrieve_keep_top_k=tc.retrieve_keep_top_k,
            last_n_tokens=tc.last_n_tokens,
            max_retrievals=tc.max_retrievals,
            prompt_budget=ctx.lm.prompt_budget(g, max_length),
            template=ctx.template,
        )

    def generator(self, ctx: MethodContext):
        return TriggeredGenerator(
            ctx.lm,
            self.trigger(self.params),
            self.settings(ctx),
            retrieve=lambda query, k: ctx.retriever.search([query], k)[0],
            knowledge=self.knowledge(ctx),
            forward=self.forward(ctx),
        )

    def run(self, examples: Sequence[Example], ctx: MethodContext) -> list[MethodOutput]:
        engine = self.generator(ctx)
        return [engine.answer(ex.question) for ex in examples]


@METHODS.register("fix-length-retrieval", "FL-RAG: retrieve before every fix_length generated tokens")
class FixLengthRetrieval(TriggeredMethod):
    def trigger(self, tc: TriggerConfig):
        return FixLengthTrigger(step_tokens=tc.fix_length)


@METHODS.register("fix-sentence-retrieval", "FS-RAG: retrieve before every generated sentence")
class FixSentenceRetrieval(TriggeredMethod):
    def trigger(self, tc: TriggerConfig):
        return FixSentenceTrigger()


@METHODS.register("token", "FLARE: retrieve and regenerate a sentence whose tokens are improbable")
class TokenRetrieval(TriggeredMethod):
    default_query = "current_wo_wrong"
    default_threshold = 0.1

    def trigger(self, tc: TriggerConfig):
        return TokenProbabilityTrigger(threshold=self.threshold(tc), solver=tc.sentence_solver)


@METHODS.register("dragin", "DRAGIN: RIND trigger (entropy x attention) and QFS query from attended words")
class DraginRetrieval(TriggeredMethod):
    default_query = "real_words"
    default_threshold = 1.2

    def trigger(self, tc: TriggerConfig):
        return RindTrigger(threshold=self.threshold(tc), check_real_words=tc.check_real_words)
