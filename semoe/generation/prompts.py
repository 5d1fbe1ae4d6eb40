"""Prompt construction: instruction, optional retrieved passages, few-shot turns and an
optional chain of thought. Answers are asked for as "The answer is X." so that
DRAGIN/PRAG-style extraction applies to every method alike."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from semoe.data.schema import Passage

Message = dict


@dataclass(frozen=True)
class Shot:
    question: str
    passage: Passage
    reasoning: str
    answer: str


# Invented entities, so the shots teach the format without leaking facts of any dataset.
SHOTS: tuple[Shot, ...] = (
    Shot(
        question="Where was Teodric Almsvane born?",
        passage=Passage(
            "shot-1",
            "Teodric Almsvane",
            "Teodric Almsvane (born 1931) is a bridge engineer. Almsvane was born in Kelloway, "
            "a harbour town in Orvania, and later worked for the Duvessa Company.",
        ),
        reasoning="The passage says Teodric Almsvane was born in Kelloway.",
        answer="Kelloway",
    ),
    Shot(
        question="Who founded the Brannic Institute?",
        passage=Passage(
            "shot-2",
            "Brannic Institute",
            "The Brannic Institute is a research university in Solmere. It was founded in 1872 "
            "by Wilhelmine Oster, a chemist, and is known for its observatory.",
        ),
        reasoning="The passage says the Brannic Institute was founded by Wilhelmine Oster.",
        answer="Wilhelmine Oster",
    ),
    Shot(
        question="In which country is the birthplace of Idris Camberlo?",
        passage=Passage(
            "shot-3",
            "Idris Camberlo",
            "Idris Camberlo is a painter born in Fennick. Fennick is a river town in the north "
            "of Varossia, known for its glassworks.",
        ),
        reasoning="Idris Camberlo was born in Fennick, and Fennick is in Varossia.",
        answer="Varossia",
    ),
    Shot(
        question="Who was born first, Maren Tolliver or Osgar Pell?",
        passage=Passage(
            "shot-4",
            "Maren Tolliver",
            "Maren Tolliver (born 1902) was a novelist. Osgar Pell (born 1915) was a composer "
            "who set several of her poems to music.",
        ),
        reasoning="Maren Tolliver was born in 1902 and Osgar Pell in 1915, so Maren Tolliver was born first.",
        answer="Maren Tolliver",
    ),
)

INSTRUCTION = 'Answer the question. Reply with a short answer in the form "The answer is X."'
INSTRUCTION_COT = 'Answer the question. Think step by step, then finish with "So the answer is X."'


def format_passages(passages: Sequence[Passage]) -> str:
    return "\n".join(f"[{i}] {p.title}: {p.text}" for i, p in enumerate(passages, 1))


def user_turn(question: str, passages: Sequence[Passage] | None, cot: bool) -> str:
    parts = [INSTRUCTION_COT if cot else INSTRUCTION]
    if passages:
        parts.append("Context:\n" + format_passages(passages))
    parts.append(f"Question: {question}")
    return "\n\n".join(parts)


def assistant_turn(shot: Shot, cot: bool) -> str:
    return f"{shot.reasoning} So the answer is {shot.answer}." if cot else f"The answer is {shot.answer}."


def build_messages(
    question: str,
    passages: Sequence[Passage] | None = None,
    few_shot: int = 0,
    cot: bool = False,
) -> list[Message]:
    """Chat messages for one question; shots carry a passage only when the question does."""
    messages: list[Message] = []
    for shot in SHOTS[:few_shot]:
        messages.append({"role": "user", "content": user_turn(shot.question, [shot.passage] if passages else None, cot)})
        messages.append({"role": "assistant", "content": assistant_turn(shot, cot)})
    messages.append({"role": "user", "content": user_turn(question, passages, cot)})
    return messages
