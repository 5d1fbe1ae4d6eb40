"""No-retrieval and single-retrieval (standard RAG) generation."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable, Sequence

from semoe.data.schema import Example
from semoe.generation import METHODS
from semoe.generation.answer import answer_span, extract_answer
from semoe.generation.base import Method, MethodContext, MethodOutput, RetrievalStep
from semoe.generation.prompts import FittedPrompt, PromptTooLongError

if TYPE_CHECKING:
    from semoe.generation.lm import Generation, Message, StopWhen

Generate = Callable[[list[list["Message"]], list[int], "StopWhen"], list["Generation"]]


def answer_complete(reply: str) -> bool:
    """Whether ``reply`` holds its whole answer: the sentence after the first "the answer is"
    that introduces one has ended (``answer_span`` with ``final=False``, which counts an end
    only once no continuation can move it). Decoding on cannot change what ``extract_answer``
    returns, so a row stops here; a reply without the phrase runs to EOS or the token limit."""
    span = answer_span(reply, final=False)
    return span is not None and span[1] is not None


def answer_once(
    examples, ctx: MethodContext, passages_per_example, generate: Generate | None = None
) -> list[MethodOutput]:
    """One generation per question from its prompt fitted to the budget (``ChatLM.fit``).

    ``generate(conversations, indices, stop_when)`` answers the prompts that fit (``indices``:
    their positions in ``examples``), ending each reply once ``stop_when`` (``answer_complete``)
    accepts it; default ``ctx.lm.generate``. A question that does not fit gets an output with
    ``error`` set and no generation."""
    g = ctx.generation
    budget = ctx.lm.prompt_budget(g, g.max_new_tokens)
    fits: list[FittedPrompt | str] = []
    for ex, passages in zip(examples, passages_per_example, strict=True):
        try:
            fits.append(
                ctx.lm.fit(
                    ex.question,
                    passages,
                    few_shot=g.few_shot,
                    cot=g.chain_of_thought,
                    budget=budget,
                    template=ctx.template,
                )
            )
        except PromptTooLongError as e:
            fits.append(str(e))
    ok = [i for i, f in enumerate(fits) if isinstance(f, FittedPrompt)]
    generate = generate or (
        lambda conversations, _, stop_when: ctx.lm.generate(
            conversations, g.max_new_tokens, g.batch_size, stop_when=stop_when
        )
    )
    generations = dict(zip(ok, generate([fits[i].messages for i in ok], ok, answer_complete))) if ok else {}
    outputs = []
    for i, fit in enumerate(fits):
        if isinstance(fit, str):
            outputs.append(MethodOutput.failed(fit))
            continue
        gen = generations[i]
        out = MethodOutput(
            prediction=extract_answer(gen.text),
            raw_output=gen.text,
            generation_count=1,
            prompt_tokens=gen.prompt_tokens,
            generated_tokens=gen.new_tokens,
            latency={"generate": gen.seconds},
        )
        out.note_truncation(fit.truncation)
        outputs.append(out)
    return outputs


@METHODS.register("no-retrieval", "answer from the model's parameters alone")
class NoRetrieval(Method):
    def run(self, examples: Sequence[Example], ctx: MethodContext) -> list[MethodOutput]:
        return answer_once(examples, ctx, [None] * len(examples))


@METHODS.register("single-retrieval", "standard RAG: retrieve top-k once with the question, passages in context")
class SingleRetrieval(Method):
    uses_retrieval = True

    def run(self, examples: Sequence[Example], ctx: MethodContext) -> list[MethodOutput]:
        k = ctx.retrieval.top_k
        t0 = time.perf_counter()
        hits = ctx.retriever.search([ex.question for ex in examples], k)
        retrieve_share = (time.perf_counter() - t0) / max(len(examples), 1)
        outputs = answer_once(examples, ctx, [[h.passage for h in hs] for hs in hits])
        for ex, out, hs in zip(examples, outputs, hits):
            out.retrievals = [RetrievalStep(step=0, query=ex.question, hits=hs)]
            out.latency["retrieve"] = retrieve_share
        return outputs
