"""Answer extraction as DRAGIN/PRAG do it: take the text after the last "the answer is",
then cut at the end of the first sentence."""

from __future__ import annotations

import re

_ANSWER_IS = re.compile(r"the answer is\s*[:：]?", re.IGNORECASE)
# A sentence ends at a newline, at a final period/!/?, or at one followed by whitespace
# unless it closes a single capital initial ("J. R. Smith"); "3.5" has no whitespace.
_SENTENCE_END = re.compile(r"(?<!\b[A-Z])[.!?](?=\s)|[.!?]$|\n")


def extract_answer(text: str) -> str:
    matches = list(_ANSWER_IS.finditer(text))
    if matches:
        text = text[matches[-1].end():]
    text = text.strip()
    m = _SENTENCE_END.search(text)
    if m:
        text = text[: m.start()]
    return text.strip().strip("\"'“”*").strip()
