"""Triggered retrieval during generation: the DRAGIN family (FL-RAG, FS-RAG, FLARE, DRAGIN).

The model writes its answer one step (a sentence, or ``fix_length`` tokens) at a time. A
:class:`Policy` decides when to retrieve: before every step (fix-length / fix-sentence) or
after a step whose tokens look unreliable (FLARE's token probabilities, DRAGIN's RIND). On
a post-step trigger the step is thrown away, a query is formed, passages are retrieved and
put into the prompt, and the step is generated again; that regenerated step is accepted
without a check (as DRAGIN does), so a trigger never loops on one sentence. Generation stops
after the sentence that holds the answer (``semoe.generation.answer.answer_span``: the first
"the answer is" that introduces one), when a step adds nothing (EOS), or when the token
budget is spent. Sentences follow :func:`semoe.generation.answer.sentence_ends`, the rule
the answer extractor uses.

Cost is kept close to one generation: a single KV cache lives across steps, retrievals and
questions; each (re)prompt is matched against the token ids whose keys/values are cached,
the cache is cropped to the longest common prefix and only the remainder is run. Accepted
steps are never recomputed, and the system prompt + few-shot turns (passages go after them,
in the question's own turn) are kept aside once per kind of prompt, so every question and
every retrieval reuses them. Greedy lookahead is free (the next token is the argmax of logits
already computed), which is how a sentence end is told from "3.5"; a period whose role
depends on the next whole word ("D.C. He" vs "J. R. Smith") is not taken for an end before
that word is there, so such a step may hold two sentences. DRAGIN's
attention comes from the same decoding pass: only the last layer runs eager attention, and
only while a step is being decoded (one query row per token), every other layer and every
prefill keep the model's own kernel.

Extension points for knowledge insertion other than passages (e.g. LoRA experts swapped on a
trigger): :class:`Knowledge` decides what a retrieval changes (``insert`` returns the
passages for the prompt and may change the model, then calls
:meth:`TriggeredGenerator.invalidate_cache`), and ``forward`` replaces the model call.

The decision functions are pure and take plain arrays, so they are unit-tested on
hand-made probabilities, entropies and attention matrices. Heavy imports stay inside the
engine so importing this module is cheap.

Where this differs from DRAGIN's code (github.com/oneal2000/DRAGIN, ``src/generate.py``):

* Attention is taken in context (the full prompt plus the text so far), not from a separate
  forward over the generated chunk alone; DRAGIN's separate pass gives the chunk's first
  token a self-attention of 1, so it nearly always scores highest.
* RIND attention for token j is DRAGIN's "max" solver: per head, the max over positions
  i >= j of the step of attn[i, j] (the diagonal included, as in the code), then the mean
  over heads; a word sums its tokens' attention and
  averages their entropies; the step's word attentions are normalised to mean 1.
* ``check_real_words`` is part of the trigger decision (the paper's s_i indicator) with a
  stopword list instead of spaCy POS tags; DRAGIN's code applies it after deciding.
* QFS (``real_words``) keeps the ``retrieve_keep_top_k`` *most* attended content words (the
  paper's rule; the code sorts ascending and keeps the least attended), using the attention
  the flagged tokens pay to the question and the text so far, in the running prompt.
* Retrieved passages stay in the prompt until the next retrieval replaces them (DRAGIN drops
  them after the one regenerated sentence); the decision unit is one sentence, decided as
  soon as it is complete, instead of a 64-token chunk split afterwards.
* "the answer is" is matched case-insensitively and as words (non-CoT answers start with
  "The answer is"; "the answer isn't" is no marker).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator, Literal, Mapping, Sequence

import numpy as np

from semoe.generation.answer import (
    ANSWER_MARKER,
    answer_span,
    extract_answer,
    sentence_complete,
    split_sentences,
)
from semoe.generation.base import MethodOutput, RetrievalStep
from semoe.generation.prompts import PromptBudget, PromptTooLongError, Truncation
from semoe.generation.templates import PromptTemplate
from semoe.storage.rows import TriggerEventRow

if TYPE_CHECKING:
    import torch

    from semoe.data.schema import Passage
    from semoe.generation.lm import ChatLM
    from semoe.retrieval.base import Hit

# Function words (and contraction remnants: "'s" -> "s") that cannot carry the fact a
# retrieval is for; stands in for DRAGIN's spaCy filter (NOUN, ADJ, VERB, PROPN, NUM kept).
STOPWORDS = frozenset(
    """a an the this that these those some any each every either neither no all both few many much more most
    other such own same i me my mine myself we us our ours ourselves you your yours yourself yourselves he him
    his himself she her hers herself it its itself they them their theirs themselves what which who whom whose
    whoever whatever when where why how there here then than so too very just only also not nor or and but if
    because as until while of at by for with about against between into through during before after above
    below to from up down in out on off over under again further once am is are was were be been being have
    has had having do does did doing done will would shall should can could may might must ought let lets
    s t re ve ll d m yes""".split()
)
_PUNCT = "\"'“”‘’`.,;:!?()[]{}<>-–—…*_/\\|"


# --------------------------------------------------------------------------- text units


def is_content_word(word: str) -> bool:
    core = word.strip().strip(_PUNCT).lower()
    return any(ch.isalnum() for ch in core) and core not in STOPWORDS


def _word_pieces(text: str) -> list[str]:
    return re.findall(r"\s*\S+", text)


def query_word(word: str) -> str:
    return word.strip().strip(_PUNCT)


def word_spans(pieces: Sequence[str]) -> list[tuple[int, int]]:
    """Token ranges [start, end) of whitespace-separated words (DRAGIN merges sub-tokens the
    same way, so attention and entropy are judged per word)."""
    spans: list[list[int]] = []
    for i, p in enumerate(pieces):
        if not spans or p[:1].isspace() or pieces[i - 1].endswith("\n"):
            spans.append([i, i + 1])
        else:
            spans[-1][1] = i + 1
    return [(s, e) for s, e in spans]


# --------------------------------------------------------------------------- decisions


@dataclass
class Trigger:
    """A post-step decision to retrieve: the decisive tokens [token_index, token_end) (a
    token, or RIND's word), its score, and which tokens of the step are flagged (left out
    by ``current_wo_wrong``, attention source for QFS)."""

    token_index: int
    token_end: int
    score: float
    hit: list[bool]


def token_probability_trigger(probs: Sequence[float], threshold: float, solver: str = "avg") -> Trigger | None:
    """FLARE (DRAGIN's ``token`` method): retrieve when avg/max/min of 1-p over the step's
    tokens exceeds the threshold; tokens with 1-p above it are the flagged ones."""
    if len(probs) == 0:
        return None
    u = 1.0 - np.asarray(probs, dtype=np.float64)
    score = float({"avg": np.mean, "max": np.max, "min": np.min}[solver](u))
    if score <= threshold:
        return None
    top = int(np.argmax(u))
    return Trigger(token_index=top, token_end=top + 1, score=score, hit=[bool(v > threshold) for v in u])


def later_token_attention(attn: np.ndarray) -> np.ndarray:
    """a_j = mean over heads of max over i >= j of attn[h, i, j] (DRAGIN's "max" solver);
    ``attn`` is (heads, n, n), causal, rows = attending tokens of the step."""
    return np.asarray(attn, dtype=np.float64).max(axis=1).mean(axis=0)


def rind_scores(
    pieces: Sequence[str], entropies: Sequence[float], attention: Sequence[float], check_real_words: bool = True
) -> tuple[list[tuple[int, int]], np.ndarray]:
    """RIND per word: attention normalised to mean 1 over the step x mean token entropy x
    content-word indicator."""
    spans = word_spans(pieces)
    att = np.array([float(np.sum(attention[s:e])) for s, e in spans])
    ent = np.array([float(np.mean(entropies[s:e])) for s, e in spans])
    total = att.sum()
    att = att / total * len(spans) if total > 0 else np.ones_like(att)
    keep = np.array([is_content_word("".join(pieces[s:e])) or not check_real_words for s, e in spans], dtype=float)
    return spans, att * ent * keep


def rind_trigger(
    pieces: Sequence[str],
    entropies: Sequence[float],
    attention: Sequence[float],
    threshold: float,
    check_real_words: bool = True,
) -> Trigger | None:
    """DRAGIN: retrieve when some word's RIND score exceeds the threshold; every word
    above it is flagged, the top one is reported."""
    if len(pieces) == 0:
        return None
    spans, scores = rind_scores(pieces, entropies, attention, check_real_words)
    if not (scores > threshold).any():
        return None
    hit = [False] * len(pieces)
    for (s, e), v in zip(spans, scores):
        if v > threshold:
            hit[s:e] = [True] * (e - s)
    best = int(np.argmax(scores))
    return Trigger(token_index=spans[best][0], token_end=spans[best][1], score=float(scores[best]), hit=hit)


# --------------------------------------------------------------------------- queries


@dataclass
class QueryInputs:
    """What a query may be formed from. ``current`` is the triggering step (before a fixed
    step: the last accepted one), ``hit`` its flagged tokens (``current_wo_wrong`` drops each
    word holding one: FLARE's masked query, without sub-word fragments), ``words`` and
    ``word_scores`` the question and text so far with the attention the flagged tokens pay them."""

    question: str
    previous: str = ""
    current: Sequence[str] | None = None
    hit: Sequence[bool] | None = None
    words: Sequence[str] = ()
    word_scores: Sequence[float] = ()


def qfs_query(words: Sequence[str], scores: Sequence[float], keep_top_k: int, check_real_words: bool = True) -> str:
    """DRAGIN's QFS: the ``keep_top_k`` most attended (content) words, in text order."""
    cand = [
        (s, i)
        for i, (w, s) in enumerate(zip(words, scores))
        if query_word(w) and (is_content_word(w) or not check_real_words)
    ]
    keep = sorted(i for _, i in sorted(cand, key=lambda c: (-c[0], c[1]))[:keep_top_k])
    return " ".join(query_word(words[i]) for i in keep)


def formulate_query(
    kind: str,
    q: QueryInputs,
    *,
    keep_top_k: int = 40,
    last_n: int = 32,
    tokenize: Callable[[str], Sequence[str]] | None = None,
    check_real_words: bool = True,
) -> str:
    """The retrieval query. "the answer is" is dropped from it (format, not content: FLARE's
    masked "The answer is [xxx]." would otherwise query for it), and a query left without
    a content word falls back to the question. ``tokenize`` splits text into pieces that
    concatenate back to it (the model's tokens; default: words with their leading space)."""
    forward_all = " ".join(s.strip() for s in (q.question, q.previous) if s.strip())
    current = "".join(q.current) if q.current is not None else ""
    if kind == "direct":
        query = q.question
    elif kind == "forward_all":
        query = forward_all
    elif kind == "current":
        query = current
    elif kind == "current_wo_wrong":
        pieces, hit = list(q.current or ()), list(q.hit or ())
        query = "".join("".join(pieces[s:e]) for s, e in word_spans(pieces) if not any(hit[s:e]))
    elif kind == "last_sentence":
        query = (split_sentences(forward_all) or [""])[-1]
    elif kind == "last_n_tokens":
        query = "".join(list((tokenize or _word_pieces)(forward_all))[-last_n:])
    elif kind == "real_words":
        query = qfs_query(q.words, q.word_scores, keep_top_k, check_real_words)
    else:
        raise ValueError(f"unknown query formulation {kind!r}")
    query = " ".join(ANSWER_MARKER.sub(" ", query).split())
    return query if any(is_content_word(w) for w in query.split()) else q.question


# --------------------------------------------------------------------------- policies


@dataclass
class Unit:
    """One generated step. ``start`` is its index in the generated text and ``offset`` the
    sequence position of its first token; ``attention`` is (heads, n, n) within the step
    and ``rows`` the full last-layer rows (heads, offset+i+1), when recorded."""

    ids: list[int]
    pieces: list[str]
    probs: list[float]
    entropies: list[float]
    start: int = 0
    offset: int = 0
    complete: bool = False
    eos: bool = False
    attention: np.ndarray | None = None
    rows: list[Any] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(self.pieces)


@dataclass(frozen=True)
class Policy:
    """When to retrieve. ``before_step``: before every step; otherwise ``check`` decides
    after each step. ``step_tokens`` bounds a step (None: one sentence)."""

    before_step: bool = False
    step_tokens: int | None = None
    needs_attention: bool = False

    def check(self, unit: Unit) -> Trigger | None:
        return None


@dataclass(frozen=True)
class FixLength(Policy):
    """FL-RAG: retrieve before every ``fix_length`` tokens."""

    before_step: bool = True
    step_tokens: int | None = 16


@dataclass(frozen=True)
class FixSentence(Policy):
    """FS-RAG: retrieve before every sentence."""

    before_step: bool = True


@dataclass(frozen=True)
class TokenProbability(Policy):
    """FLARE: retrieve when a sentence's tokens are improbable."""

    threshold: float = 0.1
    solver: Literal["avg", "max", "min"] = "avg"

    def check(self, unit: Unit) -> Trigger | None:
        return token_probability_trigger(unit.probs, self.threshold, self.solver)


@dataclass(frozen=True)
class Rind(Policy):
    """DRAGIN: retrieve when an uncertain word (entropy) matters to what follows (attention)."""

    needs_attention: bool = True
    threshold: float = 1.2
    check_real_words: bool = True

    def check(self, unit: Unit) -> Trigger | None:
        if unit.attention is None:
            raise ValueError("RIND needs the step's attention; generate it with needs_attention")
        return rind_trigger(
            unit.pieces, unit.entropies, later_token_attention(unit.attention), self.threshold, self.check_real_words
        )


# --------------------------------------------------------------------------- model plumbing

RECORDING_ATTENTION = "semoe_recording"

Forward = Callable[[Any, "torch.Tensor", Any], "torch.Tensor"]


def default_forward(model, input_ids: "torch.Tensor", cache) -> "torch.Tensor":
    """Next-token logits (vocab,) after feeding ``input_ids`` (1, n) on top of ``cache``;
    only the last position goes through the LM head."""
    out = model(input_ids=input_ids, **{_cache_kwarg(type(model)): cache}, use_cache=True, logits_to_keep=1)
    return out.logits[0, -1]


@functools.lru_cache(maxsize=None)
def _cache_kwarg(model_cls) -> str:
    """transformers 5.x renamed ``past_key_values`` to ``cache`` (old name deprecated)."""
    import inspect

    return "cache" if "cache" in inspect.signature(model_cls.forward).parameters else "past_key_values"


def _recording_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Plain softmax attention that also appends each query's weights (heads, keys) to
    ``module._semoe_rows``; the mask may come in any kernel's format, or none (causal)."""
    import torch

    n_rep = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(n_rep, 1), value.repeat_interleave(n_rep, 1)
    scores = torch.matmul(query, key.transpose(2, 3)) * (scaling if scaling is not None else query.shape[-1] ** -0.5)
    q_len, k_len = scores.shape[-2:]
    if attention_mask is None:
        position = torch.arange(q_len, device=query.device)[:, None] + (k_len - q_len)
        allowed = torch.arange(k_len, device=query.device)[None, :] <= position
        scores = scores.masked_fill(~allowed, float("-inf"))
    elif attention_mask.dtype == torch.bool:
        scores = scores.masked_fill(~attention_mask[..., :k_len], float("-inf"))
    else:
        scores = scores + attention_mask[..., :k_len]
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32)
    out = torch.matmul(weights.to(value.dtype), value).transpose(1, 2).contiguous()
    for i in range(q_len):
        module._semoe_rows.append(weights[0, :, i, : k_len - q_len + i + 1].cpu())
    return out, weights


class _RecordingConfig:
    """The last attention layer's view of the config while recording: only the attention
    implementation differs, so no other layer and no mask construction changes."""

    _attn_implementation = RECORDING_ATTENTION

    def __init__(self, base):
        self._base = base

    def __getattr__(self, name):
        return getattr(self._base, name)


class LastLayerAttention:
    """Records last-layer attention rows of the tokens decoded inside ``recording()``."""

    def __init__(self, model):
        from transformers import AttentionInterface

        AttentionInterface.register(RECORDING_ATTENTION, _recording_attention)
        layers = [m for name, m in model.named_modules() if name.endswith("self_attn") and hasattr(m, "config")]
        if not layers:
            raise ValueError(f"{type(model).__name__}: no '*.self_attn' attention modules to record attention from")
        self.module = layers[-1]
        self.rows: list = []

    @contextlib.contextmanager
    def recording(self) -> Iterator[list]:
        base = self.module.config
        self.module.config = _RecordingConfig(base)
        self.module._semoe_rows = self.rows
        try:
            yield self.rows
        finally:
            self.module.config = base
            del self.module._semoe_rows


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class KVSession:
    """One KV cache and the token ids it holds. ``sync`` brings it to a target sequence by
    cropping to the longest common prefix and running only the rest; ``step`` feeds one
    token. Both return the next-token logits.

    ``remember(n)`` keeps a copy of the first n cached tokens (a few, least recently used
    dropped): the few-shot part of a prompt recurs in every question, but the live cache
    has moved on to another prompt by then (e.g. one with passages) and shares only the
    chat header with it."""

    def __init__(self, model, forward: Forward = default_forward, max_snapshots: int = 4):
        self.model = model
        self.forward = forward
        self.max_snapshots = max_snapshots
        self.ids: list[int] = []
        self.cache = None
        self.logits = None
        self.snapshots: list[tuple[list[int], Any]] = []  # most recently used first
        self.prefilled = 0  # tokens run by sync (prompt work actually done)
        self.reused = 0  # tokens sync found in the cache

    def invalidate(self) -> None:
        """Forget every cached key/value, snapshots included."""
        self.ids, self.cache, self.logits, self.snapshots = [], None, None, []

    def remember(self, n: int) -> None:
        if not 0 < n <= len(self.ids) or any(ids == self.ids[:n] for ids, _ in self.snapshots):
            return
        cache = copy.deepcopy(self.cache)
        if n < len(self.ids):
            cache.crop(n - len(self.ids))
        self.snapshots = [(self.ids[:n], cache), *self.snapshots][: self.max_snapshots]

    def _run(self, ids: Sequence[int]):
        import torch

        x = torch.tensor([list(ids)], dtype=torch.long, device=next(self.model.parameters()).device)
        self.logits = self.forward(self.model, x, self.cache).float()
        return self.logits

    def sync(self, target: Sequence[int]):
        from transformers import DynamicCache

        target = list(target)
        if not target:
            raise ValueError("cannot run an empty sequence")
        n = _common_prefix(self.ids, target)
        best = max(self.snapshots, key=lambda snap: _common_prefix(snap[0], target), default=None)
        if best is not None and _common_prefix(best[0], target) > n:
            self.snapshots.remove(best)
            self.snapshots.insert(0, best)
            self.ids, self.cache, self.logits = list(best[0]), copy.deepcopy(best[1]), None
            n = _common_prefix(self.ids, target)
        if n == len(target) == len(self.ids) and self.logits is not None:
            self.reused += n
            return self.logits
        n = min(n, len(target) - 1)  # at least one token must run to give logits
        if self.cache is None or n == 0:
            self.cache, n = DynamicCache(config=self.model.config), 0
        elif n < len(self.ids):
            self.cache.crop(n - len(self.ids))  # negative: tokens to remove
        self.reused += n
        self.prefilled += len(target) - n
        self.ids = target
        return self._run(target[n:])

    def step(self, token: int):
        self.ids.append(token)
        return self._run([token])


# --------------------------------------------------------------------------- engine


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
        policy: Policy,
        settings: Settings,
        retrieve: Callable[[str, int], list["Hit"]],
        knowledge: Knowledge | None = None,
        forward: Forward = default_forward,
    ):
        self.lm = lm
        self.tokenizer = lm.tokenizer
        self.policy = policy
        self.settings = settings
        self.retrieve = retrieve
        self.knowledge = knowledge or Knowledge()
        self.kv = KVSession(lm.model, forward)
        self.record_attention = policy.needs_attention or settings.query_formulation == "real_words"
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
        return _common_prefix(self.tokenizer(text[:cut], add_special_tokens=False).input_ids, ids) if cut > 0 else 0

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

    def _query(self, st: _Question, unit: Unit | None, trigger: Trigger | None) -> str:
        s = self.settings
        previous = self.tokenizer.decode(st.accepted, skip_special_tokens=True)
        q = QueryInputs(st.question, previous)
        if unit is not None:
            q.current = unit.pieces
            q.hit = trigger.hit if trigger else None
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
        policy = self.policy
        with torch.inference_mode():
            regenerated = False
            while len(st.accepted) < budget:
                remaining = budget - len(st.accepted)
                if policy.before_step and self._can_retrieve(st):
                    self._retrieve(st, self._query(st, st.last_unit, None), len(st.accepted), "", None)
                step_tokens = min(policy.step_tokens or remaining, remaining)
                unit = self._generate(st, step_tokens, sentence=policy.step_tokens is None, record=not regenerated)
                if not unit.ids:
                    break
                trigger = None if (regenerated or policy.before_step) else policy.check(unit)
                if trigger is not None:
                    st.hallucinations += 1
                    if self._can_retrieve(st):
                        i = trigger.token_index
                        query = self._query(st, unit, trigger)
                        token = "".join(unit.pieces[i : trigger.token_end]).strip()
                        self._retrieve(st, query, unit.start + i, token, trigger.score)
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


# --------------------------------------------------------------------------- storage


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
