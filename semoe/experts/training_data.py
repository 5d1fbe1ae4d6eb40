"""What a passage-expert trainer takes and returns: PRAG's QA training format and prompts.

Training data (PRAG's ``encode.py``): from one passage's augmentation (the passage, its
rewrites, QA pairs) build chat-formatted sequences
``user: USER_PROMPT(passages, question)`` / ``assistant: answer``. With ``recipe="prag"``
the first ceil(n_qa/2) QA pairs appear once with the passage and once with each rewrite
in the prompt, the other QA pairs once without a passage, in that order (3 QA pairs and
1 rewrite give 5 sequences); ``recipe="all"`` uses every QA pair with every context and
without one. The no-passage prompt is PRAG's same instruction with an empty knowledge
block, which is also what PRAG's inference sends in its ``prag`` mode. The loss is on the
whole sequence (PRAG) or on the answer only (``TrainingSequence.labels``).

Pure Python: the tokenizer is passed in, no torch import.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Sequence

from semoe.config import ExpertConfig
from semoe.experts.format import LoraExpert
from semoe.experts.qa_reply import QAPair

IGNORE = -100  # label of a position without loss (the Hugging Face convention)

USER_PROMPT = (
    "You should answer the question by referring to the knowledge provided below and integrating your own "
    "knowledge.\n{passages}\n\nQuestion: {question}"
)
ANSWER_PROMPT = "The answer is {answer}"


def _as_qa(q) -> QAPair:
    if isinstance(q, dict):
        return QAPair(q["question"], q["answer"], q["full_answer"])
    if isinstance(q, (tuple, list)):
        return QAPair(*q)
    return QAPair(q.question, q.answer, q.full_answer)


@dataclass(frozen=True)
class TrainingItem:
    """One passage and its augmentation: the unit an expert is trained on."""

    passage_id: str
    passage: str
    rewrites: tuple[str, ...]
    qa: tuple[QAPair, ...]

    @classmethod
    def create(cls, passage_id: str, passage: str, rewrites: Sequence[str], qa: Sequence) -> "TrainingItem":
        """``qa``: QA pairs as objects with question/answer/full_answer attributes (e.g. the
        augmenter's ``QAPair``), dicts with those keys, or (question, answer, full_answer) tuples."""
        return cls(passage_id, passage, tuple(rewrites), tuple(_as_qa(q) for q in qa))

    def content(self) -> dict:
        """What the expert learns from (the passage id is only a label)."""
        return {"passage": self.passage, "rewrites": list(self.rewrites), "qa": [asdict(q) for q in self.qa]}


@dataclass(frozen=True)
class TrainingSequence:
    ids: tuple[int, ...]
    prompt_len: int  # tokens before the assistant's answer

    def labels(self, loss_on: str) -> list[int]:
        if loss_on == "answer":
            return [IGNORE] * self.prompt_len + list(self.ids[self.prompt_len :])
        return list(self.ids)


def _question(q: str) -> str:
    q = q.strip()
    if q.endswith(" ?"):
        q = q[:-1].strip() + "?"
    return q if q.endswith("?") else q + "?"


def _sentence(s: str) -> str:
    s = s.strip()
    return s if s.endswith(".") else s + "."


def user_prompt(question: str, passages: Sequence[str] | None = None) -> str:
    """PRAG's user turn; ``passages=None`` leaves the knowledge block empty."""
    block = "".join(f"Passage {i + 1}: {p}\n" for i, p in enumerate(passages or []))
    return USER_PROMPT.format(passages=block, question=_question(question))


def assistant_turn(qa: QAPair, target: str) -> str:
    if target == "answer":
        return ANSWER_PROMPT.format(answer=_sentence(qa.answer))
    return _sentence(qa.full_answer)


def sequence_plan(item: TrainingItem, recipe: str) -> list[tuple[QAPair, str | None]]:
    """(QA pair, context or None) per training sequence, in training order."""
    contexts = [item.passage, *item.rewrites]
    if recipe == "all":
        return [(qa, c) for qa in item.qa for c in (*contexts, None)]
    with_context = (len(item.qa) + 1) // 2
    return [(qa, c) for i, qa in enumerate(item.qa) for c in (contexts if i < with_context else [None])]


def build_sequences(tokenizer, item: TrainingItem, cfg: ExpertConfig) -> list[TrainingSequence]:
    out = []
    for qa, context in sequence_plan(item, cfg.recipe):
        messages = [{"role": "user", "content": user_prompt(qa.question, None if context is None else [context])}]
        prompt = list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False))
        ids = (prompt + tokenizer.encode(assistant_turn(qa, cfg.target), add_special_tokens=False))[: cfg.max_length]
        out.append(TrainingSequence(tuple(ids), min(len(prompt), len(ids))))
    return out


@dataclass
class TrainResult:
    """One trained expert with the facts both trainers report (also stamped into its file)."""

    expert: LoraExpert
    loss_before: float | None  # mean over the passage's sequences of the per-sequence mean token loss
    loss_after: float | None
    seconds: float  # the batched trainer splits a batch's time evenly between its passages
    sequences: int

    def stamped(self) -> "TrainResult":
        """This result, its losses, time and sequence count written into the expert's meta."""
        self.expert.meta.update(
            {
                k: json.dumps(v)
                for k, v in (
                    ("loss_before", self.loss_before),
                    ("loss_after", self.loss_after),
                    ("seconds", round(self.seconds, 4)),
                    ("sequences", self.sequences),
                )
            }
        )
        return self
