"""The passage experts and parameter translators a QA run builds before it answers: the
distinct settings of the methods that insert experts, the passages PRAG trains experts of
offline, the passages a translator trains on, and the content keys of built translators."""

from __future__ import annotations

import heapq
from typing import Mapping, Sequence

from semoe.config import SemoeConfig
from semoe.data import DataContext
from semoe.data.loading import iter_passages
from semoe.data.schema import Example
from semoe.evaluation.configured import methods
from semoe.evaluation.passage_sources import retriever_for
from semoe.experts.translator import TranslatorError, built_translator, file_key, recipe_key
from semoe.hashing import digest
from semoe.storage.artifacts import ArtifactCache


def expert_settings(cfg: SemoeConfig, source: str = "trained") -> list:
    """The distinct passage-expert settings (``ExpertParams``: augment + experts) of the
    methods that insert experts from ``source`` (``experts.source``), one per setting however
    many methods share it."""
    from semoe.generation.methods.parametric import ExpertParams

    found: dict[str, ExpertParams] = {}
    for method in methods(cfg).values():
        if method.uses_experts and method.params.experts.source == source:
            params = ExpertParams(augment=method.params.augment, experts=method.params.experts)
            found.setdefault(digest(params.identity()), params)
    return list(found.values())


def expert_passages(cfg: SemoeConfig, examples: Mapping[str, Sequence[Example]], corpus_key: str | None) -> list:
    """PRAG's offline step: the passages whose experts the questions (by dataset) will ask for
    first — the top-k retrieved with each question, from the corpus or the question's own
    contexts (``retriever_for``; triggered methods may ask for more, trained on demand)."""
    found: dict = {}
    for dataset, exs in examples.items():
        if exs:
            hits = retriever_for(cfg, dataset, exs, corpus_key).search([ex.question for ex in exs], cfg.retrieval.top_k)
            found.update((h.passage.id, h.passage) for hs in hits for h in hs if h.passage.id not in found)
    return list(found.values())


def translator_settings(cfg: SemoeConfig) -> list:
    """The distinct settings of the translators the configured methods need built (translator
    experts without a given ``translator.checkpoint``)."""
    return [p for p in expert_settings(cfg, "translator") if p.experts.translator.checkpoint is None]


def translator_passages(cfg: SemoeConfig, translator) -> list:
    """The corpus passages whose PRAG experts train the translator (``TranslatorConfig``): the
    ``translator.passages`` with the smallest hashes of (seed, passage id), in that order, so
    the choice depends on the corpus content, not its order (one pass over the corpus)."""
    stream = iter_passages(cfg.corpus, DataContext.of(cfg), progress="translator passages")
    ranked = ((digest([translator.seed, p.id], 16), p) for p in stream)
    return [p for _, p in heapq.nsmallest(translator.passages, ranked, key=lambda x: x[0])]


def translator_keys(cfg: SemoeConfig, corpus_key: str | None, required: bool = True) -> dict[str, str]:
    """Method label → content key of the translator checkpoint its experts come from, for the
    methods with ``experts.source: translator`` (``identity.answer_scope``). A translator not
    built yet is a ``TranslatorError`` when ``required``, else keyed by its recipe (what a
    run's id is before its pipeline built it)."""
    keys = {}
    for label, method in methods(cfg).items():
        experts = method.params.experts if method.uses_experts else None
        if experts is None or experts.source != "translator":
            continue
        if experts.translator.checkpoint is not None:
            keys[label] = file_key(experts.translator.checkpoint)
            continue
        recipe = recipe_key(cfg.model.spec, corpus_key, method.params.augment.identity(), experts)
        record = built_translator(ArtifactCache(cfg.cache.root), recipe)
        if record is not None:
            keys[label] = record.key
        elif not required:
            keys[label] = f"recipe:{recipe}"
        else:
            raise TranslatorError(
                f"method {label!r} uses translator experts but no translator was built for its settings: "
                "run the pipeline (`semoe run`), which builds it first"
            )
    return keys
