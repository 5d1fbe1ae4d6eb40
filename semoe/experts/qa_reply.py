"""The QA pairs an LLM writes about a passage, read from its reply.

:func:`parse_qa_pairs` reads the reply with the lenient JSON reader
(:mod:`semoe.experts.lenient_json`) and keeps the items with a question and an answer.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from semoe.experts.lenient_json import JSONNestingError, json_items


@dataclass(frozen=True)
class QAPair:
    question: str
    answer: str
    full_answer: str


class QAParseError(ValueError):
    """No usable QA pair in a model output; the message is the reason."""


def _text(value: str) -> str:
    """``value`` with escaped UTF-16 surrogate pairs (``\\ud83d\\ude00``) joined into their
    character and lone halves replaced by U+FFFD: a lone surrogate cannot be encoded as UTF-8,
    so it would fail the cache write and the results store."""
    return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _field(value: object) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return " ".join(_text(value).split()) if isinstance(value, str) else ""


def parse_qa_pairs(text: str) -> list[QAPair]:
    """QA pairs from a model output, repairing what can be repaired.

    Valid JSON is read as it is (typographic quotes inside strings kept, ``\\uXXXX``
    surrogate pairs joined); only what strict parsing rejects is repaired. Accepted: a JSON
    list (or bare objects) with prose or markdown fences around it, single or typographic
    quotes as delimiters, unquoted keys, trailing or doubled commas, missing closing brackets
    (output cut off by the token limit keeps every field it completed), repeated keys (the
    first wins). Items without a complete question and answer are dropped; a missing
    ``full_answer`` becomes the answer.
    Raises :class:`QAParseError` with the reason when no pair remains, or when the JSON is
    nested deeper than ``lenient_json.MAX_DEPTH``.
    """
    try:
        items, found = json_items(text)
    except JSONNestingError as e:
        raise QAParseError(str(e)) from None
    if not found:
        raise QAParseError("no JSON list or object in the output")
    pairs: list[QAPair] = []
    dropped: Counter = Counter()
    for item in items:
        if not isinstance(item, dict):
            dropped["not an object"] += 1
            continue
        fields = {re.sub(r"[\s-]+", "_", str(k).strip().lower()): v for k, v in reversed(item.items())}
        question, answer = _field(fields.get("question")), _field(fields.get("answer"))
        if not question or not answer:
            dropped["no question" if not question else "no answer"] += 1
            continue
        pairs.append(QAPair(question, answer, _field(fields.get("full_answer")) or answer))
    if not pairs:
        detail = ", ".join(f"{n} {why}" for why, n in dropped.items())
        raise QAParseError(f"no item with a question and an answer ({detail})" if detail else "empty JSON list")
    return pairs
