"""No-retrieval and single-retrieval (standard RAG) generation."""

from __future__ import annotations

import time
from typing import Sequence

from semoe.data.schema import Example
from semoe.generation import METHODS
from semoe.generation.answer import extract_answer
from semoe.generation.base import Method, MethodContext, MethodOutput, RetrievalStep
from semoe.generation.prompts import build_messages


def _answer_all(examples, ctx: MethodContext, passages_per_example) -> list[MethodOutput]:
    g = ctx.cfg.generation
    conversations = [
        build_messages(ex.question, passages, few_shot=g.few_shot, cot=g.chain_of_thought)
        for ex, passages in zip(examples, passages_per_example)
    ]
    generations = ctx.lm.generate(conversations, max_new_tokens=g.max_new_tokens, batch_size=g.batch_size)
    return [
        MethodOutput(
            prediction=extract_answer(gen.text),
            raw_output=gen.text,
            generation_count=1,
            prompt_tokens=gen.prompt_tokens,
            generated_tokens=gen.new_tokens,
            latency={"generate": gen.seconds},
        )
        for gen in generations
    ]


@METHODS.register("no-retrieval", "answer from the model's parameters alone")
class NoRetrieval(Method):
    def run(self, examples: Sequence[Example], ctx: MethodContext) -> list[MethodOutput]:
        return _answer_all(examples, ctx, [None] * len(examples))


@METHODS.register("single-retrieval", "standard RAG: retrieve top-k once with the question, passages in context")
class SingleRetrieval(Method):
    uses_retrieval = True

    def run(self, examples: Sequence[Example], ctx: MethodContext) -> list[MethodOutput]:
        k = ctx.cfg.retrieval.top_k
        t0 = time.perf_counter()
        hits = ctx.retriever.search([ex.question for ex in examples], k)
        retrieve_share = (time.perf_counter() - t0) / max(len(examples), 1)
        outputs = _answer_all(examples, ctx, [[h.passage for h in hs] for hs in hits])
        for ex, out, hs in zip(examples, outputs, hits):
            out.retrievals = [RetrievalStep(step=0, query=ex.question, hits=hs)]
            out.latency["retrieve"] = retrieve_share
        return outputs
