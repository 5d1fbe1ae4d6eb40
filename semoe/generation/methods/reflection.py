"""Reflection-token adaptive retrieval, as Self-RAG (Asai et al., ICLR 2024) and Open-RAG
(Islam et al., Findings of EMNLP 2024) run short-form QA: ``run_short_form_multihop.py``
(``ShayekhBinIslam/openrag``), ``call_model_rerank_w_scores_batch``.

For any causal LM whose tokenizer has the reflection tokens (``REFLECTION_TOKENS``):

1. **decide**: ``always_retrieve``, ``no_retrieval``, or ``adaptive_retrieval``: retrieve
   when p([Retrieval]) / (p([Retrieval]) + p([No Retrieval])) at the first generated
   position of the question's prompt exceeds ``threshold``;
2. **answer**: without retrieval, once from ``prompt + "[No Retrieval]"``; with retrieval,
   once per passage from ``prompt + "[Retrieval]<paragraph>TEXT</paragraph>"``, the k
   passages of a question in one batched generate;
3. **score** each passage's answer from the reflection-token probabilities: relevance
   p([Relevant]) / (p([Relevant]) + p([Irrelevant])) at the first generated position;
   groundedness (p(full) + ½ p(partial)) / Σ p(grounding) at the first position that
   generated a grounding token; utility Σ v_i p([Utility:i]) / Σ p(utility), v = −1, −½, 0,
   ½, 1, at the first position that generated a utility token (0 when the token never
   appears); score = w_rel·rel + w_sup·grd + w_use·use (+ exp(mean token log p) with
   ``use_seq_score``); the best-scoring answer is returned (the first on ties).

Deviations from Open-RAG's code, each on purpose:

- The adaptive decision reads one forward pass's next-token distribution; Open-RAG runs a
  whole greedy generation and reads its first step (the same distribution).
- Probabilities come from the full softmax; Open-RAG keeps the top 5,000 log-probs per step
  and counts a token outside them as exp(−100), which only changes probabilities < 1e-40.
- Open-RAG gives an answer whose text is ``"</s>"`` the score −1, which its own decoding
  (``skip_special_tokens``) never produces; here an answer that is empty once the reflection
  tokens are removed gets −1.
- The closed-set aggregation (FEVER, ARC: scores summed per answer option) is not
  implemented: semoe evaluates open QA.
- Passages are cut to ``generation.max_passage_tokens`` (start kept, as ``fit_messages``
  does) and further when the prompt would exceed the model's context; Open-RAG never cuts.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Literal, Sequence

from pydantic import Field

from semoe.config import ConfigError, Section
from semoe.data.schema import Example, Passage
from semoe.generation import METHODS
from semoe.generation.answer import extract_answer
from semoe.generation.base import Method, MethodContext, MethodOutput, RetrievalStep
from semoe.generation.prompts import PromptBudget, PromptTooLongError, Truncation, _cut

if TYPE_CHECKING:
    from semoe.generation.lm import ChatLM, ScoredGeneration

RETRIEVE, NO_RETRIEVE = "[Retrieval]", "[No Retrieval]"
RELEVANCE = ("[Relevant]", "[Irrelevant]")
GROUNDING = ("[Fully supported]", "[Partially supported]", "[No support / Contradictory]")
UTILITY = tuple(f"[Utility:{i}]" for i in range(1, 6))
PARAGRAPH = ("<paragraph>", "</paragraph>")
REFLECTION_TOKENS = (RETRIEVE, NO_RETRIEVE, *RELEVANCE, *GROUNDING, *UTILITY, *PARAGRAPH)
GROUNDING_VALUES = (1.0, 0.5, 0.0)  # partial support counts half
UTILITY_VALUES = (-1.0, -0.5, 0.0, 0.5, 1.0)
EMPTY_ANSWER_SCORE = -1.0

# Open-RAG's multi-hop prompt (run_short_form_multihop.py: TASK_INSTRUCTION + prompt_no_input,
# the instruction being the question), joined as its code joins it.
OPENRAG_INSTRUCTION = (
    "You are a question answering agent. Given a context and a question, your task is to answer the question "
    "based on the context. Instead of a full sentence, your answer must be the shortest word or phrase or named "
    "entity. Some example outputs 'answer' are: yes; no; Ibn Sina; Doha, Qatar; 2,132 seats, Los Angeles, "
    "California etc."
)
OPENRAG_PROMPT = OPENRAG_INSTRUCTION + "### Instruction:\n{question}\n\n### Response:\n"


class ReflectionParams(Section):
    mode: Literal["adaptive_retrieval", "always_retrieve", "no_retrieval"] = "adaptive_retrieval"
    threshold: float = Field(
        0.2, ge=0, le=1, description="adaptive mode: retrieve when p(Retrieval)/(p(Retrieval)+p(No Retrieval)) > it"
    )
    k: int | None = Field(None, ge=1, le=100, description="passages answered per question; None: retrieval.top_k")
    w_rel: float = Field(1.0, description="weight of the relevance score")
    w_sup: float = Field(1.0, description="weight of the groundedness score")
    w_use: float = Field(0.5, description="weight of the utility score (−1…1)")
    use_seq_score: bool = Field(False, description="add exp(mean token log-probability) of the answer")
    max_new_tokens: int | None = Field(None, ge=1, le=4096, description="None: generation.max_new_tokens")
    prompt: Literal["openrag", "pipeline"] = Field(
        "openrag",
        description="openrag: Open-RAG's multi-hop instruction, the reply is the answer; "
        "pipeline: semoe's chat prompt, the answer extracted from 'The answer is X'",
    )


def reflection_token_ids(tokenizer) -> dict[str, int]:
    """Token id of each of ``REFLECTION_TOKENS``; a ConfigError naming those the tokenizer lacks."""
    vocab = tokenizer.get_vocab()
    missing = [t for t in REFLECTION_TOKENS if t not in vocab]
    if missing:
        raise ConfigError(
            f"method reflection: the model's tokenizer lacks the reflection tokens {missing} "
            f"(a Self-RAG or Open-RAG model has them)"
        )
    return {t: vocab[t] for t in REFLECTION_TOKENS}


def retrieval_probability(p_retrieve: float, p_no_retrieve: float) -> float:
    """p([Retrieval]) / (p([Retrieval]) + p([No Retrieval])); 0 when both are 0."""
    total = p_retrieve + p_no_retrieve
    return p_retrieve / total if total > 0 else 0.0


def _first_position(tokens: Sequence[int], ids: Sequence[int]) -> int | None:
    wanted = set(ids)
    return next((j for j, t in enumerate(tokens) if t in wanted), None)


def _normalised(logprobs: Sequence[float]) -> list[float]:
    probs = [math.exp(lp) for lp in logprobs]
    total = sum(probs)
    return [p / total if total > 0 else 0.0 for p in probs]


@dataclass
class PassageScore:
    """One passage's answer and its scores (``predictions.extra['passages']``)."""

    passage_id: str
    answer: str
    relevance: float
    grounding: float
    utility: float
    seq_logprob: float  # mean log p of the answer's tokens (EOS included)
    score: float


def score_answer(
    gen: "ScoredGeneration", ids: dict[str, int], params: ReflectionParams, answer: str, passage_id: str
) -> PassageScore:
    """The scores of one passage's reply (``gen.watched`` columns in ``REFLECTION_TOKENS``
    order), as the module docstring describes."""
    col = {t: i for i, t in enumerate(REFLECTION_TOKENS)}

    def at(position: int, names: Sequence[str]) -> list[float]:
        return _normalised([gen.watched[position][col[n]] for n in names])

    relevance = at(0, RELEVANCE)[0]
    j = _first_position(gen.tokens, [ids[t] for t in GROUNDING])
    grounding = 0.0 if j is None else sum(v * p for v, p in zip(GROUNDING_VALUES, at(j, GROUNDING)))
    j = _first_position(gen.tokens, [ids[t] for t in UTILITY])
    utility = 0.0 if j is None else sum(v * p for v, p in zip(UTILITY_VALUES, at(j, UTILITY)))
    seq = sum(gen.token_logprobs) / len(gen.token_logprobs)
    score = params.w_rel * relevance + params.w_sup * grounding + params.w_use * utility
    if params.use_seq_score:
        score += math.exp(seq)
    if not answer:
        score = EMPTY_ANSWER_SCORE
    return PassageScore(passage_id, answer, relevance, grounding, utility, seq, score)


def clean_reply(text: str) -> str:
    """The reply without reflection tokens, EOS strings and line breaks, and without a
    leading '#' or ':' (Open-RAG's ``postprocess_answer_option_conditioned`` and the
    prefix strip of its main loop)."""
    for token in (*REFLECTION_TOKENS, "</s>", "<|endoftext|>", "\n"):
        text = text.replace(token, "")
    if len(text) > 1 and text[0] in "#:":
        text = text[1:]
    return text.strip()


@METHODS.register(
    "reflection", "Self-RAG / Open-RAG: reflection-token adaptive retrieval, one answer per passage, best score wins"
)
class ReflectionRetrieval(Method):
    uses_retrieval = True
    needs_weights = True  # token probabilities
    Params = ReflectionParams

    def run(self, examples: Sequence[Example], ctx: MethodContext) -> list[MethodOutput]:
        p, g, lm = self.params, ctx.generation, ctx.lm
        ids = reflection_token_ids(lm.tokenizer)
        watch = [ids[t] for t in REFLECTION_TOKENS]
        max_new = p.max_new_tokens or g.max_new_tokens
        budget = lm.prompt_budget(g, max_new)
        bases: list[str | None] = []
        outputs: list[MethodOutput] = []
        for ex in examples:
            try:
                bases.append(self._base_prompt(ex.question, lm, g, budget))
                outputs.append(MethodOutput(prediction="", raw_output=""))
            except PromptTooLongError as e:
                bases.append(None)
                outputs.append(MethodOutput.failed(str(e)))
        ok = [i for i, b in enumerate(bases) if b is not None]
        decisions: dict[int, tuple[bool, float | None]] = {}
        if p.mode == "adaptive_retrieval" and ok:
            firsts = lm.generate_scored([bases[i] for i in ok], 1, watch, batch_size=g.batch_size)
            for i, first in zip(ok, firsts):
                r, nr = (math.exp(first.watched[0][REFLECTION_TOKENS.index(t)]) for t in (RETRIEVE, NO_RETRIEVE))
                prob = retrieval_probability(r, nr)
                decisions[i] = (prob > p.threshold, prob)
                self._count(outputs[i], first, generations=1)
        else:
            decisions = {i: (p.mode == "always_retrieve", None) for i in ok}
        retrieving = [i for i in ok if decisions[i][0]]
        self._answer_without(examples, [i for i in ok if not decisions[i][0]], bases, outputs, lm, max_new, g)
        if retrieving:
            k = p.k or ctx.retrieval.top_k
            t0 = time.perf_counter()
            hits = ctx.retriever.search([examples[i].question for i in retrieving], k)
            share = (time.perf_counter() - t0) / len(retrieving)
            for i, hs in zip(retrieving, hits):
                outputs[i].retrievals = [RetrievalStep(step=0, query=examples[i].question, hits=hs)]
                outputs[i].latency["retrieve"] = share
                self._answer_with(outputs[i], bases[i], [h.passage for h in hs], ids, lm, max_new, budget)
        for i in ok:
            retrieve, prob = decisions[i]
            out = outputs[i]
            out.extra["retrieval"] = {"mode": p.mode, "decision": retrieve, "probability": prob}
            if retrieve:
                out.extra["trigger_events"] = [
                    {
                        "step": 0,
                        "token_index": 0,
                        "token": RETRIEVE,
                        "score": prob,
                        "query": examples[i].question,
                        "passage_ids": [h.passage.id for step in out.retrievals for h in step.hits],
                    }
                ]
        return outputs

    # ------------------------------------------------------------------ prompts

    def _base_prompt(self, question: str, lm: "ChatLM", g, budget: PromptBudget) -> str:
        """The question's prompt (no passage); PromptTooLongError when it alone exceeds ``budget``."""
        if self.params.prompt == "pipeline":
            fit = lm.fit(question, None, few_shot=g.few_shot, cot=g.chain_of_thought, budget=budget)
            text = lm.render(fit.messages)
        else:
            text = _bos(lm.tokenizer) + OPENRAG_PROMPT.format(question=question)
        tokens = _count(lm, text)
        if budget.prompt_tokens is not None and tokens > budget.prompt_tokens:
            raise PromptTooLongError(
                f"the question does not fit the prompt budget of {budget.prompt_tokens} tokens ({budget.origin}): "
                f"its prompt is {tokens} tokens"
            )
        return text

    def _answer(self, text: str) -> str:
        reply = clean_reply(text)
        return extract_answer(reply) if self.params.prompt == "pipeline" else reply

    @staticmethod
    def _count(out: MethodOutput, gen: "ScoredGeneration", generations: int) -> None:
        out.generation_count += generations
        out.prompt_tokens += gen.prompt_tokens
        out.generated_tokens += len(gen.tokens)
        out.latency["generate"] = out.latency.get("generate", 0.0) + gen.seconds

    # ------------------------------------------------------------------ answering

    def _answer_without(self, examples, rows: list[int], bases, outputs, lm: "ChatLM", max_new: int, g) -> None:
        """``prompt + [No Retrieval]`` for every question that does not retrieve, batched."""
        if not rows:
            return
        gens = lm.generate_scored([bases[i] + NO_RETRIEVE for i in rows], max_new, [], batch_size=g.batch_size)
        for i, gen in zip(rows, gens):
            outputs[i].prediction, outputs[i].raw_output = self._answer(gen.text), gen.text
            self._count(outputs[i], gen, generations=1)

    def _answer_with(
        self,
        out: MethodOutput,
        base: str,
        passages: list[Passage],
        ids: dict[str, int],
        lm: "ChatLM",
        max_new: int,
        budget: PromptBudget,
    ) -> None:
        """One answer per passage in one batched generate, each scored; the best is the answer."""
        truncation = Truncation()
        prompts, shown = [], []
        for passage in passages:
            prompt = self._with_passage(base, passage, lm, budget, truncation)
            if prompt is not None:
                prompts.append(prompt)
                shown.append(passage)
        if not prompts:
            out.error = "no passage fits the prompt budget beside the question"
            out.note_truncation(truncation)
            return
        watch = [ids[t] for t in REFLECTION_TOKENS]
        gens = lm.generate_scored(prompts, max_new, watch, batch_size=len(prompts))
        scores = [score_answer(gen, ids, self.params, self._answer(gen.text), p.id) for gen, p in zip(gens, shown)]
        best = max(range(len(scores)), key=lambda j: (scores[j].score, -j))
        out.prediction, out.raw_output = scores[best].answer, gens[best].text
        for gen in gens:
            self._count(out, gen, generations=0)
        out.generation_count += 1  # one batched generate
        out.extra["passages"] = [asdict(s) for s in scores]
        out.extra["chosen_passage"] = scores[best].passage_id
        out.note_truncation(truncation)

    def _with_passage(
        self, base: str, passage: Passage, lm: "ChatLM", budget: PromptBudget, truncation: Truncation
    ) -> str | None:
        """``base + [Retrieval]<paragraph>TEXT</paragraph>`` with TEXT cut to the passage
        budget and then to the prompt budget; None (recorded as dropped) when nothing fits."""
        ends = lm.token_ends(passage.text)
        limit = budget.passage_tokens
        cap = len(ends) if limit is None else min(limit, len(ends))
        while cap > 0:
            shown = _cut(passage, ends, cap)
            prompt = f"{base}{RETRIEVE}{PARAGRAPH[0]}{shown.text}{PARAGRAPH[1]}"
            over = 0 if budget.prompt_tokens is None else _count(lm, prompt) - budget.prompt_tokens
            if over <= 0:
                if shown is not passage:
                    truncation.cut_passages.append(passage.id)
                return prompt
            cap -= over
        truncation.dropped_passages.append(passage.id)
        return None


def _count(lm: "ChatLM", text: str) -> int:
    return len(lm.tokenizer(text, add_special_tokens=False).input_ids)


def _bos(tokenizer) -> str:
    """The BOS text when the tokenizer adds one by default: Open-RAG tokenizes its prompt with
    special tokens (Llama-2: BOS first); ``generate_scored`` adds none itself."""
    bos = tokenizer.bos_token_id
    adds = bos is not None and tokenizer("a").input_ids[:1] == [bos]
    return tokenizer.bos_token if adds else ""
