"""What a generation method is given and what it returns."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

from semoe.data.schema import Example

if TYPE_CHECKING:
    from semoe.config import SemoeConfig
    from semoe.experts.provider import ExpertProvider
    from semoe.generation.lm import ChatLM
    from semoe.generation.prompts import Truncation
    from semoe.retrieval.base import Hit, Retriever


@dataclass
class RetrievalStep:
    step: int
    query: str
    hits: list["Hit"]


@dataclass
class MethodOutput:
    prediction: str
    raw_output: str
    retrievals: list[RetrievalStep] = field(default_factory=list)
    generation_count: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    latency: dict[str, float] = field(default_factory=dict)  # stage -> seconds
    extra: dict = field(default_factory=dict)
    truncated: bool = False  # a prompt was cut to fit the budget; extra["truncation"] says what
    error: str | None = None  # why the question has no answer (no generation ran for it)

    @classmethod
    def failed(cls, reason: str, **fields) -> "MethodOutput":
        """An output without an answer, e.g. for a question that does not fit the context."""
        return cls(prediction="", raw_output="", error=reason, **fields)

    def note_truncation(self, truncation: "Truncation") -> None:
        if truncation:
            self.truncated = True
            self.extra["truncation"] = truncation.as_dict()


@dataclass
class MethodContext:
    cfg: "SemoeConfig"
    lm: "ChatLM"
    retriever: "Retriever | None" = None
    experts: "ExpertProvider | None" = None  # passage experts, for methods that insert them


class Method(ABC):
    """A way of answering questions; registered in ``semoe.generation.METHODS``.

    ``run`` gets a batch so methods can batch model calls; per-question latencies are
    the question's share of the batch's wall time.
    """

    uses_retrieval: bool = False
    uses_experts: bool = False  # needs passage experts (the pipeline builds them beforehand)
    uses_trigger: bool = False  # reads the ``trigger:`` section (the DRAGIN family)

    @classmethod
    def config_sections(cls) -> tuple[str, ...]:
        """The config sections whose settings decide this method's answers: part of each
        stored answer's identity (``semoe.identity.answer_scope``), so a change to any other
        section reuses the answers."""
        sections = ["model", "generation"]
        if cls.uses_retrieval:
            sections.append("retrieval")
        if cls.uses_trigger:
            sections.append("trigger")
        if cls.uses_experts:
            sections += ["augment", "experts"]
        return tuple(sections)

    @abstractmethod
    def run(self, examples: Sequence[Example], ctx: MethodContext) -> list[MethodOutput]: ...
