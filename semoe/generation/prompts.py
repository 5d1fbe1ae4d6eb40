"""Prompt construction: instruction, optional retrieved passages, few-shot turns and an
optional chain of thought. Answers are asked for as "The answer is X." so that
DRAGIN/PRAG-style extraction applies to every method alike.

:func:`fit_messages` fits a prompt to the model's context; every method builds its prompts
through it (via ``ChatLM.fit``), so truncation is the same for all of them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Sequence

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
        messages.append(
            {"role": "user", "content": user_turn(shot.question, [shot.passage] if passages else None, cot)}
        )
        messages.append({"role": "assistant", "content": assistant_turn(shot, cot)})
    messages.append({"role": "user", "content": user_turn(question, passages, cot)})
    return messages


# --------------------------------------------------------------------------- token budget

TRUNCATION_MARK = " …"
# Passages are not shrunk below this many tokens (~25 words) before few-shot turns are
# dropped: a stub of the evidence is worth more than a worked example of the format.
MIN_PASSAGE_TOKENS = 32


class PromptTooLongError(ValueError):
    """The question does not fit the prompt budget even without passages and few-shot turns."""


@dataclass(frozen=True)
class PromptBudget:
    """Token limits of one prompt. ``passage_tokens``: each passage's text (None: no
    per-passage limit); ``prompt_tokens``: the whole rendered prompt, chat template and
    system prompt included (None: no limit, the model's context length is unknown)."""

    passage_tokens: int | None
    prompt_tokens: int | None
    origin: str = ""  # where prompt_tokens comes from, for error messages


@dataclass
class Truncation:
    """What fitting a prompt (or all prompts of one question) cut: passages shown shortened,
    passages left out, few-shot turns left out."""

    cut_passages: list[str] = field(default_factory=list)
    dropped_passages: list[str] = field(default_factory=list)
    dropped_shots: int = 0

    def __bool__(self) -> bool:
        return bool(self.cut_passages or self.dropped_passages or self.dropped_shots)

    def merge(self, other: "Truncation") -> None:
        """Add another prompt's cuts (triggered methods re-prompt after each retrieval)."""
        self.cut_passages += [p for p in other.cut_passages if p not in self.cut_passages]
        self.dropped_passages += [p for p in other.dropped_passages if p not in self.dropped_passages]
        self.dropped_shots = max(self.dropped_shots, other.dropped_shots)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class FittedPrompt:
    """A prompt within its budget: the messages to render, its rendered length in tokens,
    and what was cut to get there."""

    messages: list[Message]
    prompt_tokens: int
    truncation: Truncation


def _cut(passage: Passage, ends: Sequence[int], cap: int) -> Passage:
    """The passage with its text cut after ``cap`` tokens (``ends``: each token's end offset
    in the text), marked with TRUNCATION_MARK; unchanged when it has no more tokens."""
    if cap >= len(ends):
        return passage
    return dataclasses.replace(passage, text=passage.text[: ends[cap - 1]].rstrip() + TRUNCATION_MARK)


def fit_messages(
    question: str,
    passages: Sequence[Passage] | None,
    few_shot: int,
    cot: bool,
    budget: PromptBudget,
    count_tokens: Callable[[list[Message]], int],
    token_ends: Callable[[str], Sequence[int]],
) -> FittedPrompt:
    """``build_messages`` fitted to ``budget``; a prompt within budget is returned unchanged.

    ``count_tokens(messages)``: tokens of the rendered prompt; ``token_ends(text)``: end
    offset in ``text`` of each of its tokens, so passages are cut on a token boundary, keeping
    their start (the title and lead of a Wikipedia passage hold most of its facts). In order:

    1. every passage's text is cut to ``budget.passage_tokens`` tokens;
    2. while the prompt is over ``budget.prompt_tokens``: passages are shrunk evenly (one cap
       for all, so the longest are cut first) down to MIN_PASSAGE_TOKENS;
    3. then few-shot turns are dropped, last first (passages get the largest cap that fits);
    4. then passages are dropped, lowest ranked first;
    5. a question that does not fit alone (instruction, question, system prompt) raises
       PromptTooLongError: it is never answered from a cut question.

    Raises PromptTooLongError with the sizes, for the caller to record as the question's error.
    """
    passages = list(passages or [])
    ends = [token_ends(p.text) for p in passages]
    limit = budget.passage_tokens
    longest = max((len(e) for e in ends), default=0)
    top = min(longest, limit) if limit is not None else longest

    def attempt(shots: int, n_passages: int, cap: int) -> tuple[list[Message], int, list[Passage]]:
        shown = [_cut(p, e, cap) for p, e in zip(passages[:n_passages], ends)]
        messages = build_messages(question, shown or None, few_shot=shots, cot=cot)
        return messages, count_tokens(messages), shown

    def result(shots: int, n_passages: int, messages, tokens: int, shown) -> FittedPrompt:
        cut = [p.id for p, s in zip(passages, shown) if s is not p]
        return FittedPrompt(messages, tokens, Truncation(cut, [p.id for p in passages[n_passages:]], few_shot - shots))

    first = attempt(few_shot, len(passages), top)
    if budget.prompt_tokens is None or first[1] <= budget.prompt_tokens:
        return result(few_shot, len(passages), *first)
    floor = min(MIN_PASSAGE_TOKENS, top)
    # Few-shot turns go before passages; each layout gets the largest passage cap that fits.
    layouts = [(shots, len(passages)) for shots in range(few_shot, -1, -1)]
    layouts += [(0, n) for n in range(len(passages) - 1, -1, -1)]
    for shots, n_passages in layouts:
        cap = floor if n_passages else top
        best = attempt(shots, n_passages, cap)
        if best[1] > budget.prompt_tokens:
            continue
        lo, hi = cap, top  # largest cap in [lo, hi] that fits: lo fits
        while n_passages and lo < hi:
            mid = (lo + hi + 1) // 2
            trial = attempt(shots, n_passages, mid)
            if trial[1] <= budget.prompt_tokens:
                lo, best = mid, trial
            else:
                hi = mid - 1
        return result(shots, n_passages, *best)
    alone = attempt(0, 0, top)[1]
    origin = f" ({budget.origin})" if budget.origin else ""
    raise PromptTooLongError(
        f"the question does not fit the prompt budget of {budget.prompt_tokens} tokens{origin}: "
        f"without passages or few-shot turns its prompt is {alone} tokens"
    )
