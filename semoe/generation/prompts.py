"""Prompt construction: a registered template's instruction and exemplars
(``semoe.generation.templates``), optional retrieved passages, the question and an optional
chain of thought. Every template asks for a closing sentence that starts with "The answer is"
(``ANSWER_LEAD``, the marker ``semoe.generation.answer`` extracts after), described in words,
with no placeholder a model could copy ("The answer is X"), so DRAGIN/PRAG-style extraction
applies to every method and template alike.

:func:`fit_messages` fits a prompt to the model's context; every method builds its prompts
through it (via ``ChatLM.fit``), so truncation is the same for all of them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Sequence

from semoe.data.schema import Passage
from semoe.generation.answer import ANSWER_LEAD
from semoe.generation.templates import Exemplar, PromptTemplate, template_named

Message = dict


def instruction(template: PromptTemplate, cot: bool, with_passages: bool) -> str:
    """The template's task, its note on passages when the prompt shows some, and how to close
    the reply: a sentence that starts with ``ANSWER_LEAD`` (after "So" in a chain of thought)
    and goes on as the template's ``answer_format`` says."""
    lead = f"So {ANSWER_LEAD.lower()}" if cot else ANSWER_LEAD
    how = "Think step by step, then end" if cot else "End"
    parts = [template.task, template.with_passages if with_passages else ""]
    parts.append(f'{how} your reply with a sentence that starts with "{lead}" and {template.answer_format}.')
    return " ".join(p for p in parts if p)


def format_passages(passages: Sequence[Passage]) -> str:
    return "\n".join(f"[{i}] {p.title}: {p.text}" for i, p in enumerate(passages, 1))


def user_turn(
    question: str, passages: Sequence[Passage] | None, cot: bool, template: PromptTemplate | None = None
) -> str:
    parts = [instruction(template or template_named(None), cot, bool(passages))]
    if passages:
        parts.append("Context:\n" + format_passages(passages))
    parts.append(f"Question: {question}")
    return "\n\n".join(parts)


def assistant_turn(shot: Exemplar, cot: bool) -> str:
    """An exemplar's reply: its reasoning and "So the answer is ...", or only "The answer is ..."."""
    if cot:
        return f"{shot.reasoning} So {ANSWER_LEAD.lower()} {shot.answer}."
    return f"{ANSWER_LEAD} {shot.answer}."


def build_messages(
    question: str,
    passages: Sequence[Passage] | None = None,
    few_shot: int = 0,
    cot: bool = False,
    template: PromptTemplate | None = None,
) -> list[Message]:
    """Chat messages for one question with ``template`` (None: ``generic``): up to ``few_shot``
    of its exemplars as user/assistant turns, then the question's turn. Exemplars show their
    passages only when the question has passages."""
    template = template or template_named(None)
    messages: list[Message] = []
    for shot in template.exemplars[:few_shot]:
        shown = shot.passages if passages else None
        messages.append({"role": "user", "content": user_turn(shot.question, shown, cot, template)})
        messages.append({"role": "assistant", "content": assistant_turn(shot, cot)})
    messages.append({"role": "user", "content": user_turn(question, passages, cot, template)})
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
    template: PromptTemplate | None = None,
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

    ``template``: the prompt template (None: ``generic``); ``few_shot`` counts only the
    exemplars it has (a zero-shot template drops none).

    Raises PromptTooLongError with the sizes, for the caller to record as the question's error.
    """
    template = template or template_named(None)
    few_shot = min(few_shot, len(template.exemplars))
    passages = list(passages or [])
    ends = [token_ends(p.text) for p in passages]
    limit = budget.passage_tokens
    longest = max((len(e) for e in ends), default=0)
    top = min(longest, limit) if limit is not None else longest

    def attempt(shots: int, n_passages: int, cap: int) -> tuple[list[Message], int, list[Passage]]:
        shown = [_cut(p, e, cap) for p, e in zip(passages[:n_passages], ends)]
        messages = build_messages(question, shown or None, few_shot=shots, cot=cot, template=template)
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
