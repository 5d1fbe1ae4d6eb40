"""What a generation method is given and what it returns, and how a configured method
(``semoe.config.MethodSpec``) becomes an instance with validated params."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Mapping, Sequence

from semoe.config import GenerationConfig, MethodSpec, RetrievalConfig, Section, deep_merge, validate_params
from semoe.data.schema import Example
from semoe.generation import METHODS

if TYPE_CHECKING:
    from semoe.config import SemoeConfig
    from semoe.experts.provider import ExpertProvider
    from semoe.generation.lm import ChatLM
    from semoe.generation.prompts import Truncation
    from semoe.generation.templates import PromptTemplate
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
    """What a method runs with: the shared generation and retrieval settings, the model,
    the retriever (retrieving methods), the passage-expert provider (expert methods) and the
    prompt template of the dataset (None: ``generic``; ``evaluation.answer_chunks.method_context`` always
    gives the dataset's, ``semoe.generation.templates.template_for``)."""

    generation: GenerationConfig
    lm: "ChatLM"
    retrieval: RetrievalConfig | None = None
    retriever: "Retriever | None" = None
    experts: "ExpertProvider | None" = None
    template: "PromptTemplate | None" = None


class NoParams(Section):
    """A method without settings of its own."""


class Method(ABC):
    """A way of answering questions; registered in ``semoe.generation.METHODS``.

    ``Params`` is the method's own settings model; ``defaults_from`` names the shared config
    sections its params default from (``""``: the section's fields are the params' own
    fields; a field name: that field is the whole section), so ``{name: dragin, params:
    {hallucination_threshold: 1.5}}`` overrides one field of ``trigger:``. ``run`` gets a
    batch so methods can batch model calls; per-question latencies are the question's share
    of the batch's wall time.
    """

    uses_retrieval: ClassVar[bool] = False
    uses_experts: ClassVar[bool] = False  # needs passage experts (the pipeline builds them beforehand)
    # reads model internals (logits, attention, LoRA weights): refused with the weightless dummy model
    needs_weights: ClassVar[bool] = False
    Params: ClassVar[type[Section]] = NoParams
    defaults_from: ClassVar[dict[str, str]] = {}

    def __init__(self, params: Section | None = None):
        self.params = self.Params() if params is None else params

    @classmethod
    def resolve(cls, spec: MethodSpec, shared: Mapping[str, Section]) -> Section:
        """``spec.params`` over the defaults drawn from the ``shared`` sections (by name);
        a ``ConfigError`` naming the method and each bad field."""
        defaults: dict = {}
        for field_name, section in cls.defaults_from.items():
            dump = shared[section].model_dump()
            if field_name:
                defaults[field_name] = dump
            else:
                defaults.update(dump)
        where = f"methods: {spec.display_name!r} ({spec.name}) params"
        return validate_params(cls.Params, deep_merge(defaults, spec.params), where)

    def generates_queries(self) -> bool:
        """Whether it retrieves with queries written during generation, not only with the
        question: a dataset's provided contexts (``semoe.retrieval.provided``) answer the question only."""
        return False

    @abstractmethod
    def run(self, examples: Sequence[Example], ctx: MethodContext) -> list[MethodOutput]: ...


# Root sections that methods' params default from (``Method.defaults_from``).
SHARED_SECTIONS = ("trigger", "augment", "experts")


def build_method(spec: MethodSpec, cfg: "SemoeConfig") -> Method:
    """The registered method ``spec.name`` with its params resolved over ``cfg``'s shared
    sections (``Method.resolve``)."""

    cls = METHODS.get(spec.name)
    return cls(cls.resolve(spec, {name: getattr(cfg, name) for name in SHARED_SECTIONS}))
