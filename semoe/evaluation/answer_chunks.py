"""Answering a chunk of questions: the configured chat model, the passage experts and the
context (``MethodContext``) a method runs with, and one ``WorkItem`` answered."""

from __future__ import annotations

from semoe.config import SemoeConfig
from semoe.evaluation.planning import WorkItem
from semoe.experts.provider import ExpertProvider
from semoe.generation.base import MethodContext, MethodOutput, build_method
from semoe.generation.loading import load_chat_lm
from semoe.generation.templates import template_for


def load_lm(cfg: SemoeConfig):
    """The configured model as a ``ChatLM`` (loaded once per process: ``load_model`` is memoised)."""
    return load_chat_lm(cfg.model.spec, cfg.cache.root, cfg.model.dtype, cfg.model.device, cfg.generation.system_prompt)


def expert_provider(cfg: SemoeConfig, lm, params, corpus_key: str | None = None):
    """Passage experts for ``lm`` with ``params.augment`` / ``params.experts`` (``ExpertParams``);
    ``corpus_key``: the corpus a built translator was trained on (translator experts)."""
    return ExpertProvider(lm, cfg.model, params.augment, params.experts, cfg.cache.root, corpus_key)


def method_context(cfg: SemoeConfig, dataset: str, retriever=None, expert_params=None) -> MethodContext:
    """What a method runs with on the dataset labelled ``dataset``: the configured model,
    generation and retrieval settings, the dataset's prompt template (``template_for``), the
    retriever, and passage experts made with ``expert_params`` (``ExpertParams``) if given."""
    lm = load_lm(cfg)
    corpus_key = retriever.corpus_key if retriever is not None else None
    experts = expert_provider(cfg, lm, expert_params, corpus_key) if expert_params is not None else None
    return MethodContext(
        generation=cfg.generation,
        lm=lm,
        retrieval=cfg.retrieval,
        retriever=retriever,
        experts=experts,
        template=template_for(cfg.dataset(dataset)),
    )


def answer_chunk(cfg: SemoeConfig, item: WorkItem, retriever=None) -> tuple[list[MethodOutput], dict[str, list[dict]]]:
    """(outputs of ``item``'s method, catalogue rows of the passage experts it built).
    RuntimeError when the method retrieves and no ``retriever`` is given."""
    method = build_method(cfg.method(item.method), cfg)
    if method.uses_retrieval and retriever is None:
        raise RuntimeError(f"method {item.method!r} needs a retriever but none was opened")
    ctx = method_context(cfg, item.dataset, retriever, method.params if method.uses_experts else None)
    outputs = method.run(item.examples, ctx)
    return outputs, ctx.experts.drain_rows() if ctx.experts else {}
