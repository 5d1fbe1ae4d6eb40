"""PRAG's augmentation prompts: a rewrite of the passage and a JSON list of QA pairs about it.

The wording, the worked example and the prefilled reply start are part of every cached
augmentation's key through ``semoe.experts.augment.PROMPT_VERSION``: bump it when any of
them changes.
"""

from __future__ import annotations

import json
from dataclasses import asdict

from semoe.experts.qa_reply import QAPair
from semoe.generation.lm import Message

_REWRITE_PROMPT = (
    "Rewrite the passage below. Keep the entities, proper nouns and key details (names, places, "
    "dates, terminology) exactly as they are, but express the same ideas in different words and "
    "sentences. Do not add or leave out facts. Reply with the rewritten passage only.\n\n"
    "Passage:\n{passage}"
)
_QA_PROMPT = (
    "Here is a passage. Write {count} that can be answered with the information in the passage. "
    "For each question give a short answer taken from the passage and a full answer in one complete "
    "sentence. Reply only with a JSON list in this format:\n"
    '[{{"question": "...", "answer": "...", "full_answer": "..."}}]\n\n'
    "Passage:\n{passage}"
)
# One worked example, given as an earlier turn of the chat: a 135M model follows a shown
# reply far better than a described one. Its entities are invented and absent from any corpus.
_EXAMPLE_PASSAGE = (
    "Osric Pellane was a glassblower born in Tarrowmere in 1902. For many years Pellane worked for "
    "the Hesk Glass Company, and his blue vases are still collected today."
)
EXAMPLE_QA = (
    QAPair("Where was Osric Pellane born?", "Tarrowmere", "Osric Pellane was born in Tarrowmere."),
    QAPair("When was Osric Pellane born?", "1902", "Osric Pellane was born in 1902."),
    QAPair(
        "Which company did Osric Pellane work for?",
        "the Hesk Glass Company",
        "Osric Pellane worked for the Hesk Glass Company.",
    ),
)
# The reply is started for the model, which keeps it from opening with prose.
QA_PREFIX = '[{"question": "'
_NUMBERS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


def rewrite_messages(passage_text: str) -> list[Message]:
    return [{"role": "user", "content": _REWRITE_PROMPT.format(passage=passage_text)}]


def qa_messages(passage_text: str, n_qa: int) -> list[Message]:
    """The QA request with the worked example as a previous turn (the reply is prefilled with QA_PREFIX)."""
    count = "one question" if n_qa == 1 else f"{_NUMBERS[n_qa - 1]} different questions"
    example = json.dumps([asdict(q) for q in EXAMPLE_QA[:n_qa]], ensure_ascii=False)
    return [
        {"role": "user", "content": _QA_PROMPT.format(count=count, passage=_EXAMPLE_PASSAGE)},
        {"role": "assistant", "content": example},
        {"role": "user", "content": _QA_PROMPT.format(count=count, passage=passage_text)},
    ]
