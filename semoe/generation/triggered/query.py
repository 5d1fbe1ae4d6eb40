"""Query formulation of the DRAGIN family: what a retrieval searches for, from the question,
the text so far and the triggering step (DRAGIN's QFS: the most attended words).

Where this differs from DRAGIN's code (github.com/oneal2000/DRAGIN, ``src/generate.py``):
QFS (``real_words``) keeps the ``retrieve_keep_top_k`` *most* attended content words (the
paper's rule; the code sorts ascending and keeps the least attended), using the attention the
flagged tokens pay to the question and the text so far, in the running prompt.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Sequence

from semoe.generation.answer import ANSWER_MARKER, split_sentences
from semoe.generation.triggered.words import is_content_word, query_word, word_spans


def _word_pieces(text: str) -> list[str]:
    return re.findall(r"\s*\S+", text)


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
