"""Methods that inject passages as LoRA experts (PRAG's modes, and SEMoE).

``prag`` answers with the top-k passages' experts only, ``combine`` with experts and the
passages in context (PRAG's ``icl`` mode is ``single-retrieval``). ``semoe`` retrieves when
the DRAGIN trigger fires, swaps the retrieved passages' experts into the model and goes on;
``semoe-icl`` also shows the passages in context. Experts come from the artifact cache or
are augmented and trained on demand, or with ``experts.source: translator`` from a DyPRAG
parameter translator (``ExpertProvider``; ``dyprag.py`` names PRAG's modes with it).
"""

from __future__ import annotations

import time
from typing import Sequence

from semoe.config import AugmentConfig, ExpertConfig, Section, TriggerConfig
from semoe.data.schema import Example
from semoe.experts.inference import HeterogeneousLora, generate_with_experts
from semoe.generation import METHODS
from semoe.generation.base import Method, MethodContext, MethodOutput, RetrievalStep
from semoe.generation.methods.dynamic import DraginRetrieval
from semoe.generation.methods.standard import answer_once
from semoe.generation.triggered.engine import Knowledge


class ExpertParams(Section):
    """How a method's passage experts are made: ``augment:`` and ``experts:`` per method."""

    augment: AugmentConfig = AugmentConfig()
    experts: ExpertConfig = ExpertConfig()


class SemoeParams(TriggerConfig, ExpertParams):
    """SEMoE's trigger settings (flat, as ``trigger:``) and its experts' (nested)."""


EXPERT_DEFAULTS = {"augment": "augment", "experts": "experts"}


class _ExpertRetrieval(Method):
    """Retrieve once with the question; answer with the passages' experts."""

    uses_retrieval = True
    uses_experts = True
    needs_weights = True  # LoRA experts are trained on and inserted into the model
    Params = ExpertParams
    defaults_from = EXPERT_DEFAULTS
    passages_in_context = False

    def run(self, examples: Sequence[Example], ctx: MethodContext) -> list[MethodOutput]:
        g, n = ctx.generation, max(len(examples), 1)
        t0 = time.perf_counter()
        hits = ctx.retriever.search([ex.question for ex in examples], ctx.retrieval.top_k)
        retrieve_s = (time.perf_counter() - t0) / n
        passages = [[h.passage for h in hs] for hs in hits]
        experts: dict[int, list] = {}  # only questions whose prompt fits get experts
        experts_s = 0.0

        def generate(conversations, indices, stop_when):
            nonlocal experts_s
            t0 = time.perf_counter()
            experts.update((i, ctx.experts.experts_for(passages[i])) for i in indices)
            experts_s = (time.perf_counter() - t0) / n
            return generate_with_experts(
                ctx.lm,
                conversations,
                [experts[i] for i in indices],
                g.max_new_tokens,
                g.batch_size,
                stop_when=stop_when,
            )

        shown = passages if self.passages_in_context else [None] * len(examples)
        outputs = answer_once(examples, ctx, shown, generate)
        for i, (ex, hs, out) in enumerate(zip(examples, hits, outputs)):
            out.retrievals = [RetrievalStep(step=0, query=ex.question, hits=hs)]
            out.latency.update(retrieve=retrieve_s, experts=experts_s)
            out.extra["experts"] = len(experts.get(i, ()))
        return outputs


@METHODS.register("prag", "PRAG: top-k passages' LoRA experts (summed), no passages in context")
class Prag(_ExpertRetrieval):
    pass


@METHODS.register("combine", "PRAG combine: top-k passages' experts and the passages in context")
class Combine(_ExpertRetrieval):
    passages_in_context = True


class ExpertSwap(Knowledge):
    """On each trigger, replace the model's experts with the retrieved passages' experts."""

    def __init__(self, ctx: MethodContext, show_passages: bool):
        self.provider = ctx.experts
        self.lora = HeterogeneousLora(ctx.lm.model)
        self.show_passages = show_passages
        self.active = False
        self.seconds = 0.0

    def start(self, engine, question: str) -> None:
        self.seconds = 0.0
        if self.active:
            self.lora.close()
            self.active = False
            engine.invalidate_cache()

    def insert(self, engine, hits):
        t0 = time.perf_counter()
        passages = [h.passage for h in hits]
        self.lora.set_experts([self.provider.experts_for(passages)])
        self.active = True
        engine.invalidate_cache()  # cached keys/values were computed with the previous experts
        self.seconds += time.perf_counter() - t0
        return passages if self.show_passages else None


@METHODS.register("semoe", "SEMoE: DRAGIN trigger; retrieved passages' experts swapped into the model")
class Semoe(DraginRetrieval):
    uses_experts = True
    Params = SemoeParams
    defaults_from = {"": "trigger", **EXPERT_DEFAULTS}
    show_passages = False

    def run(self, examples: Sequence[Example], ctx: MethodContext) -> list[MethodOutput]:
        knowledge = ExpertSwap(ctx, self.show_passages)
        self.knowledge = lambda _ctx: knowledge
        engine = self.generator(ctx)
        outputs = []
        try:
            for ex in examples:
                out = engine.answer(ex.question)
                out.latency["experts"] = knowledge.seconds
                out.latency["generate"] = max(out.latency.get("generate", 0.0) - knowledge.seconds, 0.0)
                outputs.append(out)
        finally:
            knowledge.lora.close()
        return outputs


@METHODS.register("semoe-icl", "SEMoE with the retrieved passages also in context")
class SemoeIcl(Semoe):
    show_passages = True
