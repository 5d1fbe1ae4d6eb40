"""The DRAGIN-family engine (FL-RAG, FS-RAG, FLARE, DRAGIN): triggered retrieval during
generation.

The model writes its answer one step (a sentence, or ``fix_length`` tokens) at a time. A
:class:`~semoe.generation.triggered.triggers.Trigger` decides when to retrieve: before every
step (fix-length / fix-sentence) or after a step whose tokens look unreliable (FLARE's token
probabilities, DRAGIN's RIND). On a post-step trigger the step is thrown away, a query is
formed, passages are retrieved and put into the prompt, and the step is generated again; that
regenerated step is accepted without a check (as DRAGIN does), so a trigger never loops on one
sentence. Generation stops after the sentence that holds the answer
(``semoe.generation.answer.answer_span``: the first "the answer is" that introduces one), when
a step adds nothing (EOS), or when the token budget is spent. Sentences follow
:func:`semoe.generation.answer.sentence_ends`, the rule the answer extractor uses.

Cost is kept close to one generation: a single KV cache
(:class:`~semoe.generation.triggered.kv_session.KVSession`) lives across steps, retrievals and
questions; each (re)prompt is matched against the token ids whose keys/values are cached, the
cache is cropped to the longest common prefix and only the remainder is run. Accepted steps
are never recomputed, and the system prompt + few-shot turns (passages go after them, in the
question's own turn) are kept aside once per kind of prompt, so every question and every
retrieval reuses them. Greedy lookahead is free (the next token is the argmax of logits
already computed), which is how a sentence end is told from "3.5"; a period whose role depends
on the next whole word ("D.C. He" vs "J. R. Smith") is not taken for an end before that word
is there, so such a step may hold two sentences. DRAGIN's attention comes from the same
decoding pass (:mod:`semoe.generation.triggered.attention`).

Extension points for knowledge insertion other than passages (e.g. LoRA experts swapped on a
trigger): :class:`Knowledge` decides what a retrieval changes (``insert`` returns the passages
for the prompt and may change the model, then calls :meth:`TriggeredGenerator.invalidate_cache`),
and ``forward`` replaces the model call.

Where this differs from DRAGIN's code (github.com/oneal2000/DRAGIN, ``src/generate.py``):

* Retrieved passages stay in the prompt until the next retrieval replaces them (DRAGIN drops
  them after the one regenerated sentence); the decision unit is one sentence, decided as
  soon as it is complete, instead of a 64-token chunk split afterwards.
* "the answer is" is matched case-insensitively and as words (non-CoT answers start with
  "The answer is"; "the answer isn't" is no marker).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from semoe.generation.answer import answer_span, extract_answer, sentence_complete, split_sentences
from semoe.generation.base import MethodOutput, RetrievalStep
from semoe.generation.prompts import PromptBudget, PromptTooLongError, Truncation
from semoe.generation.templates import PromptTemplate
from semoe.generation.triggered.attention import LastLayerAttention
from semoe.generation.triggered.kv_session import Forward, KVSession, common_prefix, default_forward
from semoe.generation.triggered.query import QueryInputs, formulate_query
from semoe.generation.triggered.triggers import Trigger, TriggerDecision, Unit
from semoe.generation.triggered.words import word_spans

if TYPE_CHECKING:
    from semoe.data.schema import Passage
    from semoe.generation.lm import ChatLM
    from semoe.retrieval.base import Hit


class Knowledge:
    """What a retrieval changes. The default puts the passages into the prompt. A variant
    that changes the model instead (e.g. swaps in the passages' LoRA experts) does so in
    ``insert``, calls ``engine.invalidate_cache()`` (cached keys/values came from the old
    weights) and returns the passages the prompt should still show (or None)."""

    def start(self, engine: "TriggeredGenerator", question: str) -> None:
        """Called before each question: undo the last question's model changes here (and
        invalidate the cache if there were any)."""

    def insert(self, engine: "TriggeredGenerator", hits: Sequence["Hit"]) -> Sequence["Passage"] | None:
        return [h.passage for h in hits] or None


@dataclass(frozen=True)
class Settings:
    """Resolved options (see ``TriggerConfig`` for their meaning)."""

    query_formulation: str
    retrieve_topk: int
    generate_max_length: int
    few_shot: int = 0
    chain_of_thought: bool = False
    check_real_words: bool = True
    retrieve_keep_top_k: int = 40
    last_n_tokens: int = 32
    max_retrievals: int | None = None
    prompt_budget: PromptBudget = PromptBudget(None, None)  # every (re)prompt is fitted to it
    template: PromptTemplate | None = None  # the dataset's prompt template (None: generic)


@dataclass
class _Question:
    question: str
    passages: list | None = None
    prompt_text: str = ""
    prompt_ids: list[int] = field(default_factory=list)
    shared_prefix: int = 0
    question_positions: list[int] | None = None
    accepted: list[int] = field(default_factory=list)
    pieces: list[str] = field(default_factory=list)
    last_unit: Unit | None = None
    retrievals: list[RetrievalStep] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)
    prompt_tokens: int = 0
    units: int = 0
    tokens: int = 0
    sentences: int = 0
    hallucinations: int = 0
    retrieve_s: float = 0.0
    truncation: Truncation = field(default_factory=Truncation)  # cuts of all its prompts


class TriggeredGenerator:
    """Answers questions one at a time with triggered retrieval (see the module docstring).

    ``retrieve(query, k)`` returns hits best first. The KV cache persists across questions
    (their common chat-template prefix is reused).
    """

    def __init__(
        self,
        lm: "ChatLM",
        trigger: Trigger,
        settings: Settings,
        retrieve: Callable[[str, int], list["Hit"]],
        knowledge: Knowledge | None = None,
        forward: Forward = default_forward,
    ):
        self.lm = lm
        self.tokenizer = lm.tokenizer
        self.trigger = trigger
        self.settings = settings
        self.retrieve = retrieve
        self.knowledge = knowledge or Knowledge()
        self.kv = KVSession(lm.model, forward, reserve=settings.generate_max_length)
        self.record_attention = trigger.needs_attention or settings.query_formulation == "real_words"
        self.attention = LastLayerAttention(lm.model) if self.record_attention else None
        eos = getattr(lm.model.generation_config, "eos_token_id", None)
        eos = eos if isinstance(eos, (list, tuple)) else [eos]
        self.eos = {t for t in [self.tokenizer.eos_token_id, *eos] if t is not None}
        self._pieces: dict[int, str] = {}

    def invalidate_cache(self) -> None:
        """Drop all cached keys/values (call after changing model weights)."""
        self.kv.invalidate()

    # ---- text and prompts

    def piece(self, token: int) -> str:
        if token not in self._pieces:
            self._pieces[token] = self.tokenizer.decode([token], skip_special_tokens=True)
        return self._pieces[token]

    def _set_prompt(self, st: _Question, passages) -> None:
        s = self.settings
        st.passages = list(passages) if passages else None
        fitted = self.lm.fit(
            st.question,
            st.passages,
            few_shot=s.few_shot,
            cot=s.chain_of_thought,
            budget=s.prompt_budget,
            template=s.template,
        )
        st.truncation.merge(fitted.truncation)
        messages = fitted.messages
        st.prompt_text = self.lm.render(messages)
        st.prompt_ids = self.tokenizer(st.prompt_text, add_special_tokens=False).input_ids
        st.shared_prefix = self._shared_prefix(st.prompt_text, st.prompt_ids, messages[-1]["content"])
        st.question_positions = None
        st.prompt_tokens += len(st.prompt_ids)

    def _shared_prefix(self, text: str, ids: list[int], last_turn: str) -> int:
        """Tokens before the question's own turn (system prompt, few-shot turns): the same
        for every question whose prompt shows the same kind of shots."""
        cut = text.rfind(last_turn)
        return common_prefix(self.tokenizer(text[:cut], add_special_tokens=False).input_ids, ids) if cut > 0 else 0

    def _question_positions(self, st: _Question) -> list[int]:
        """Prompt positions of the question's tokens (QFS scores its words too)."""
        if st.question_positions is None:
            start = st.prompt_text.rfind(st.question)
            end = start + len(st.question)
            enc = self.tokenizer(st.prompt_text, add_special_tokens=False, return_offsets_mapping=True)
            spans = enc["offset_mapping"] if start >= 0 else []
            st.question_positions = [i for i, (a, b) in enumerate(spans) if a < end and b > start]
        return st.question_positions

    # ---- decoding

    def _pick(self, logits) -> tuple[int, float, float]:
        import torch

        probs = torch.softmax(logits, dim=-1)
        token = int(torch.argmax(logits))
        return token, float(probs[token]), float(torch.special.entr(probs).sum())

    def _generate(self, st: _Question, max_tokens: int, sentence: bool, record: bool = True) -> Unit:
        """Decode one step greedily on top of the prompt and the accepted text; ``record``:
        keep its attention when the engine needs it (a step accepted unchecked does not)."""
        if not st.prompt_ids:
            self._set_prompt(st, None)
        offset = len(st.prompt_ids) + len(st.accepted)
        logits = self.kv.sync(st.prompt_ids + st.accepted)
        self.kv.remember(st.shared_prefix)
        unit = Unit([], [], [], [], start=len(st.accepted), offset=offset)
        attention = self.attention if record else None
        if attention:
            attention.rows.clear()
        with attention.recording() if attention else contextlib.nullcontext():
            token, p, h = self._pick(logits)
            unit.eos = unit.complete = token in self.eos
            while not unit.eos and len(unit.ids) < max_tokens:
                unit.ids.append(token)
                unit.pieces.append(self.piece(token))
                unit.probs.append(p)
                unit.entropies.append(h)
                token, p, h = self._pick(self.kv.step(token))
                unit.eos = token in self.eos
                unit.complete = unit.eos or sentence_complete(unit.text, self.piece(token))
                if sentence and unit.complete:
                    break
        if attention:
            unit.rows = list(attention.rows)
            unit.attention = self._step_attention(unit)
        st.units += 1
        st.tokens += len(unit.ids)
        st.sentences += len(split_sentences(unit.text))
        return unit

    @staticmethod
    def _step_attention(unit: Unit) -> np.ndarray:
        n = len(unit.ids)
        heads = unit.rows[0].shape[0] if unit.rows else 0
        out = np.zeros((heads, n, n))
        for i, row in enumerate(unit.rows[:n]):
            out[:, i, : i + 1] = row[:, unit.offset : unit.offset + i + 1].numpy()
        return out

    def _accept(self, st: _Question, unit: Unit) -> None:
        st.accepted += unit.ids
        st.pieces += unit.pieces
        st.last_unit = unit

    # ---- retrieval

    def _word_attention(self, st: _Question, unit: Unit, hit: Sequence[bool] | None) -> tuple[list[str], list[float]]:
        """Words of the question and of the text up to the end of ``unit``, each scored by
        the last-layer attention (mean over heads and over flagged tokens; all of the
        step's tokens when none is flagged) it receives."""
        rows = [r for r, h in zip(unit.rows, hit or ()) if h] or unit.rows
        length = max(r.shape[1] for r in rows)
        focus = np.zeros(length)
        for r in rows:
            focus[: r.shape[1]] += r.mean(0).numpy() / len(rows)
        generated = st.pieces if unit is st.last_unit else st.pieces + unit.pieces
        base = len(st.prompt_ids)
        segments = [
            (self._question_positions(st), None),
            (list(range(base, base + len(generated))), generated),
        ]
        words, scores = [], []
        for positions, pieces in segments:
            pieces = pieces if pieces is not None else [self.piece(st.prompt_ids[i]) for i in positions]
            for s, e in word_spans(pieces):
                words.append("".join(pieces[s:e]))
                scores.append(float(sum(focus[p] for p in positions[s:e] if p < length)))
        return words, scores

    def _query(self, st: _Question, unit: Unit | None, decision: TriggerDecision | None) -> str:
        s = self.settings
        previous = self.tokenizer.decode(st.accepted, skip_special_tokens=True)
        q = QueryInputs(st.question, previous)
        if unit is not None:
            q.current = unit.pieces
            q.hit = decision.hit if decision else None
            if s.query_formulation == "real_words" and unit.rows:
                q.words, q.word_scores = self._word_attention(st, unit, q.hit)
        return formulate_query(
            s.query_formulation,
            q,
            keep_top_k=s.retrieve_keep_top_k,
            last_n=s.last_n_tokens,
            tokenize=self._token_pieces,
            check_real_words=s.check_real_words,
        )

    def _token_pieces(self, text: str) -> list[str]:
        return [self.piece(t) for t in self.tokenizer(text, add_special_tokens=False).input_ids]

    def _can_retrieve(self, st: _Question) -> bool:
        return self.settings.max_retrievals is None or len(st.retrievals) < self.settings.max_retrievals

    def _retrieve(self, st: _Question, query: str, token_index: int, token: str, score: float | None) -> None:
        t0 = time.perf_counter()
        hits = list(self.retrieve(query, self.settings.retrieve_topk))
        st.retrieve_s += time.perf_counter() - t0
        step = len(st.retrievals)
        st.retrievals.append(RetrievalStep(step=step, query=query, hits=hits))
        st.events.append(
            {
                "step": step,
                "token_index": token_index,
                "token": token,
                "score": score,
                "query": query,
                "passage_ids": [h.passage.id for h in hits],
            }
        )
        self._set_prompt(st, self.knowledge.insert(self, hits))

    # ---- the loop

    def answer(self, question: str) -> MethodOutput:
        import torch

        t0 = time.perf_counter()
        st = _Question(question)
        reused0, prefilled0 = self.kv.reused, self.kv.prefilled
        self.knowledge.start(self, question)
        s = self.settings
        try:  # fitting drops passages and shots before it fails: only the question alone can fail
            self.lm.fit(question, None, few_shot=0, cot=s.chain_of_thought, budget=s.prompt_budget, template=s.template)
        except PromptTooLongError as e:
            return MethodOutput.failed(str(e))
        budget = s.generate_max_length
        trigger = self.trigger
        with torch.inference_mode():
            regenerated = False
            while len(st.accepted) < budget:
                remaining = budget - len(st.accepted)
                if trigger.before_step and self._can_retrieve(st):
                    self._retrieve(st, self._query(st, st.last_unit, None), len(st.accepted), "", None)
                step_tokens = min(trigger.step_tokens or remaining, remaining)
                unit = self._generate(st, step_tokens, sentence=trigger.step_tokens is None, record=not regenerated)
                if not unit.ids:
                    break
                decision = None if (regenerated or trigger.before_step) else trigger.check(unit)
                if decision is not None:
                    st.hallucinations += 1
                    if self._can_retrieve(st):
                        i = decision.token_index
                        query = self._query(st, unit, decision)
                        token = "".join(unit.pieces[i : decision.token_end]).strip()
                        self._retrieve(st, query, unit.start + i, token, decision.score)
                        regenerated = True
                        continue
                regenerated = False
                self._accept(st, unit)
                text = "".join(st.pieces)
                span = answer_span(text, final=False)
                if span is not None:
                    # "The answer is:\n" is a complete unit with the answer still to come
                    finished = unit.eos or span[1] is not None or (unit.complete and text[span[0] :].strip())
                    if not finished and len(st.accepted) < budget:
                        self._accept(st, self._generate(st, budget - len(st.accepted), sentence=True, record=False))
                    break
                if unit.eos:
                    break
        text = self.tokenizer.decode(st.accepted, skip_special_tokens=True).strip()
        total = time.perf_counter() - t0
        out = MethodOutput(
            prediction=extract_answer(text),
            raw_output=text,
            retrievals=st.retrievals,
            generation_count=st.units,
            prompt_tokens=st.prompt_tokens,
            generated_tokens=st.tokens,
            latency={"retrieve": st.retrieve_s, "generate": total - st.retrieve_s},
            extra={
                "hallucination_events": st.hallucinations,
                "sentences": st.sentences,
                "tokens": st.tokens,
                "trigger_events": st.events,
                "prefill_tokens": self.kv.prefilled - prefilled0,
                "reused_tokens": self.kv.reused - reused0,
            },
        )
        out.note_truncation(st.truncation)
        return out
