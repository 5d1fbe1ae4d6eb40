"""Triggers: when the DRAGIN family retrieves during generation.

A :class:`Trigger` retrieves before every step (FL-RAG, FS-RAG) or judges each finished step
(a :class:`Unit`) and returns a :class:`TriggerDecision` when its tokens look unreliable
(FLARE's token probabilities, DRAGIN's RIND). The decision functions are pure and take plain
arrays, so they are tested on hand-made probabilities, entropies and attention matrices.

Where RIND differs from DRAGIN's code (github.com/oneal2000/DRAGIN, ``src/generate.py``):

* Attention for token j is DRAGIN's "max" solver: per head, the max over positions i >= j
  of the step of attn[i, j] (the diagonal included, as in the code), then the mean over
  heads; a word sums its tokens' attention and averages their entropies; the step's word
  attentions are normalised to mean 1.
* ``check_real_words`` is part of the trigger decision (the paper's s_i indicator) with a
  stopword list instead of spaCy POS tags; DRAGIN's code applies it after deciding.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import numpy as np

from semoe.generation.triggered.words import is_content_word, word_spans


@dataclass
class TriggerDecision:
    """A post-step decision to retrieve: the decisive tokens [token_index, token_end) (a
    token, or RIND's word), its score, and which tokens of the step are flagged (left out
    by ``current_wo_wrong``, attention source for QFS)."""

    token_index: int
    token_end: int
    score: float
    hit: list[bool]


def token_probability_trigger(probs: Sequence[float], threshold: float, solver: str = "avg") -> TriggerDecision | None:
    """FLARE (DRAGIN's ``token`` method): retrieve when avg/max/min of 1-p over the step's
    tokens exceeds the threshold; tokens with 1-p above it are the flagged ones."""
    if len(probs) == 0:
        return None
    u = 1.0 - np.asarray(probs, dtype=np.float64)
    score = float({"avg": np.mean, "max": np.max, "min": np.min}[solver](u))
    if score <= threshold:
        return None
    top = int(np.argmax(u))
    return TriggerDecision(token_index=top, token_end=top + 1, score=score, hit=[bool(v > threshold) for v in u])


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
) -> TriggerDecision | None:
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
    return TriggerDecision(token_index=spans[best][0], token_end=spans[best][1], score=float(scores[best]), hit=hit)


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
class Trigger:
    """When to retrieve. ``before_step``: before every step; otherwise ``check`` decides
    after each step. ``step_tokens`` bounds a step (None: one sentence)."""

    before_step: bool = False
    step_tokens: int | None = None
    needs_attention: bool = False

    def check(self, unit: Unit) -> TriggerDecision | None:
        return None


@dataclass(frozen=True)
class FixLengthTrigger(Trigger):
    """FL-RAG: retrieve before every ``fix_length`` tokens."""

    before_step: bool = True
    step_tokens: int | None = 16


@dataclass(frozen=True)
class FixSentenceTrigger(Trigger):
    """FS-RAG: retrieve before every sentence."""

    before_step: bool = True


@dataclass(frozen=True)
class TokenProbabilityTrigger(Trigger):
    """FLARE: retrieve when a sentence's tokens are improbable."""

    threshold: float = 0.1
    solver: Literal["avg", "max", "min"] = "avg"

    def check(self, unit: Unit) -> TriggerDecision | None:
        return token_probability_trigger(unit.probs, self.threshold, self.solver)


@dataclass(frozen=True)
class RindTrigger(Trigger):
    """DRAGIN: retrieve when an uncertain word (entropy) matters to what follows (attention)."""

    needs_attention: bool = True
    threshold: float = 1.2
    check_real_words: bool = True

    def check(self, unit: Unit) -> TriggerDecision | None:
        if unit.attention is None:
            raise ValueError("RIND needs the step's attention; generate it with needs_attention")
        return rind_trigger(
            unit.pieces, unit.entropies, later_token_attention(unit.attention), self.threshold, self.check_real_words
        )
