"""Self-RAG / Open-RAG evaluation files: questions with their retrieved contexts.

Self-RAG (Asai et al., ICLR 2024; ``AkariAsai/self-rag``) and Open-RAG (Islam et al.,
Findings of EMNLP 2024; ``ShayekhBinIslam/openrag``, ``run_short_form_multihop.py``) ship
their QA benchmarks as JSONL (or a JSON list) whose rows carry the passages a retriever
found for the question: ``ctxs`` (Contriever output) or ``top_contexts``, each
``{title, text}`` with an optional ``id``. Their inference answers from those passages, in
the file's order, instead of searching a corpus; the loader keeps them on
``Example.contexts`` so the provided-contexts retriever (``semoe.retrieval.provided``) can
serve them the same way, with no index.
"""

from __future__ import annotations

from typing import Any, Iterator

from semoe.config import DatasetConfig
from semoe.data import DATASETS, PARAGRAPHS, DataContext
from semoe.data.loading import Record, as_text
from semoe.data.schema import Example, Passage
from semoe.data.sources.qa_datasets import as_list, dataset_records, make_example

CONTEXT_FIELDS = ("ctxs", "top_contexts")


def _contexts(rec: Record, ex_id: str) -> list[Passage]:
    """The row's contexts in order; a context without an id gets ``<example id>#<position>``
    (the files mostly give none), so retrieval rows can name it."""
    key = next((k for k in CONTEXT_FIELDS if rec.get(k) is not None), None)
    if key is None:
        return []
    value = rec.data[key]
    if not isinstance(value, list):
        raise rec.error(f"field {key!r} should be a list of {{title, text}}, got {type(value).__name__}")
    out = []
    for i, ctx in enumerate(value):
        if not isinstance(ctx, dict):
            raise rec.error(f"{key}[{i}] should be an object with title and text, got {type(ctx).__name__}")
        text = ctx.get("text")
        if not isinstance(text, str) or not text.strip():
            raise rec.error(f"{key}[{i}]: field 'text' is missing, empty or not a string")
        title = ctx.get("title")
        try:
            pid = as_text(ctx["id"]) if ctx.get("id") is not None else f"{ex_id}#{i}"
            out.append(Passage(pid, "" if title is None else as_text(title), text))
        except TypeError as e:
            raise rec.error(f"{key}[{i}]: {e}") from None
    return out


def _example(rec: Record, cfg: DatasetConfig, index: int) -> Example:
    answers: Any = rec.req("answers", "answer")
    ex = make_example(
        rec,
        cfg,
        id=rec.get("id", rec.get("_id", rec.get("q_id", index))),
        answers=as_list(answers),
        type=rec.get("type", ""),
    )
    ex.contexts = _contexts(rec, ex.id)
    return ex


@DATASETS.register(
    "openrag", "Self-RAG / Open-RAG JSONL: {question, answers or answer, ctxs or top_contexts [{title, text}], id}"
)
def load_openrag(cfg: DatasetConfig, ctx: DataContext) -> list[Example]:
    """Ids default to the row's position (as ``custom`` does) when the file has none."""
    return [_example(rec, cfg, i) for i, rec in enumerate(dataset_records(cfg))]


@PARAGRAPHS.register("openrag")
def openrag_paragraphs(rec: Record) -> Iterator[tuple[str, str]]:
    """Every retrieved context of the row, in the file's order."""
    for p in _contexts(rec, "ctx"):
        yield p.title, p.text
