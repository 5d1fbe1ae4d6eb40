"""Prompt templates, registered by name: what a QA prompt says besides the question and its
passages: the task, the form of the answer and the worked examples (few-shot exemplars).

A template is data: a :class:`PromptTemplate` registered in ``TEMPLATES`` by a module of this
package (adding one is adding a file). How a template becomes chat messages is
``semoe.generation.prompts`` (the instruction that asks for "The answer is ...", the layout of
turns, the token budget), so every method renders every template alike. Because templates are
data, their modules are left out of the code identity and each answer's key holds the content
of the template it was asked with instead (``PromptTemplate.identity``, ``semoe.identity``):
editing one dataset's exemplars re-answers that dataset only.

A dataset uses the template registered under its own name, else ``generic``; ``datasets[].prompt``
names another (``template_for``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from semoe.data.schema import Passage
from semoe.hashing import digest
from semoe.registry import Registry

TEMPLATES: Registry = Registry("prompt template", __name__)

DEFAULT_TEMPLATE = "generic"


@dataclass(frozen=True)
class Exemplar:
    """One worked example: a question, the reasoning a chain-of-thought reply gives before its
    answer, the short answer, and the passages shown with it when the question has passages
    (none: the exemplar is shown without context, as in DRAGIN's CoT exemplars)."""

    question: str
    reasoning: str
    answer: str
    passages: tuple[Passage, ...] = ()


@dataclass(frozen=True)
class PromptTemplate:
    """``task``: the instruction's first sentence (what to do); ``with_passages``: a sentence
    added after it when the prompt shows passages ("" for none); ``answer_format``: how the
    closing "The answer is" sentence goes on, completing "... a sentence that starts with
    "The answer is" and {answer_format}." (e.g. "says yes or no"); ``exemplars``: the few-shot
    turns, first ones first (``generation.few_shot`` takes that many; a template without
    exemplars is zero-shot); ``source``: the paper or repository whose prompt style it follows."""

    name: str
    description: str
    task: str
    answer_format: str
    exemplars: tuple[Exemplar, ...] = ()
    with_passages: str = ""
    source: str = ""

    def identity(self) -> str:
        """Hash of everything that reaches a prompt (not the name, description or source): two
        templates with the same text give the same answers."""
        content = dataclasses.asdict(self)
        return digest({k: v for k, v in content.items() if k not in ("name", "description", "source")})


def register(template: PromptTemplate) -> PromptTemplate:
    """Register ``template`` under its name. Only plain ``PromptTemplate`` values: behaviour of
    a subclass would escape the answer key, which hashes a template's content, not its code."""
    if type(template) is not PromptTemplate:
        raise TypeError(f"prompt template {template!r} must be a PromptTemplate, not a subclass")
    return TEMPLATES.register(template.name, template.description)(template)


def template_named(name: str | None) -> PromptTemplate:
    """The registered template ``name`` (None: ``generic``); ``UnknownNameError`` (a
    ``ConfigError``) listing the registered ones."""
    return TEMPLATES.get(name or DEFAULT_TEMPLATE)


def default_template_name(dataset_name: str) -> str:
    """The template a dataset gets when its config names none: its own, else ``generic``."""
    return dataset_name if dataset_name in TEMPLATES else DEFAULT_TEMPLATE


def template_for(dataset) -> PromptTemplate:
    """The template of a dataset (a ``DatasetConfig``): ``dataset.prompt``, else the template
    registered under ``dataset.name``, else ``generic``."""
    return template_named(dataset.prompt or default_template_name(dataset.name))
