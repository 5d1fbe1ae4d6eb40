"""Where retrieving methods find the passages of a dataset's questions: the questions' own
contexts (``ProvidedContexts``, as Self-RAG and Open-RAG evaluate) or the corpus index."""

from __future__ import annotations

from typing import Mapping, Sequence

from semoe.config import ConfigError, DatasetConfig, SemoeConfig
from semoe.data.schema import Example
from semoe.evaluation.configured import dataset_config, needs_retrieval
from semoe.generation.base import build_method
from semoe.indexing import open_retriever
from semoe.retrieval.provided import ProvidedContexts


def passage_source(ds: DatasetConfig, examples: Sequence[Example]) -> str:
    """Where retrieving methods find the passages of ``ds``'s questions: ``"provided"`` (each
    question's own contexts, served by ``ProvidedContexts``; no index, as Self-RAG and Open-RAG
    evaluate) or ``"corpus"`` (the index). ``datasets[].passages: auto`` is ``provided`` when
    the questions carry contexts. DataFormatError when a provided dataset has a question
    without contexts, or one question text with two sets of contexts."""
    if ds.passages == "corpus" or (ds.passages == "auto" and not any(ex.contexts for ex in examples)):
        return "corpus"
    ProvidedContexts(examples, ds.display_name)  # raises for the cases above
    return "provided"


def provided_datasets(cfg: SemoeConfig, examples: Mapping[str, Sequence[Example]]) -> set[str]:
    """The datasets (of ``examples``, by label) whose questions bring their own passages. A
    ConfigError when a configured method retrieves with queries it generates (triggered
    methods, unless ``query_formulation: direct``): provided contexts answer the question only,
    as Open-RAG retrieves only with the question, and another query would have no passages."""
    provided = {name for name, exs in examples.items() if passage_source(dataset_config(cfg, name), exs) == "provided"}
    for spec in cfg.methods if provided else ():
        method = build_method(spec, cfg)
        if method.uses_retrieval and method.generates_queries():
            raise ConfigError(
                f"methods: {spec.display_name!r} ({spec.name}) retrieves with queries it generates, but dataset "
                f"{sorted(provided)[0]!r} answers from its questions' own contexts (datasets[].passages), which serve "
                f"only the question: give the dataset `passages: corpus`, or the method `query_formulation: direct`"
            )
    return provided


def needs_index(cfg: SemoeConfig, examples: Mapping[str, Sequence[Example]]) -> bool:
    """A retrieving method runs on a dataset that retrieves from the corpus (not its own contexts)."""
    return needs_retrieval(cfg) and bool(set(examples) - provided_datasets(cfg, examples))


def retriever_for(cfg: SemoeConfig, dataset: str, examples: Sequence[Example], corpus_key: str | None):
    """What retrieving methods search for ``examples`` of ``dataset``: their own contexts on a
    dataset that provides them (``passage_source``), else the corpus index of ``corpus_key``.
    RuntimeError for a corpus dataset when no index was opened (``corpus_key`` None)."""
    if passage_source(dataset_config(cfg, dataset), examples) == "provided":
        return ProvidedContexts(examples, dataset)
    if corpus_key is None:
        raise RuntimeError(f"dataset {dataset!r} retrieves from the corpus, but no index was opened")
    return open_retriever(cfg, corpus_key)
