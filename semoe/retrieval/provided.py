"""A question's own contexts as its retrieval results: no corpus, no index.

Self-RAG and Open-RAG evaluate on files that carry each question's retrieved passages
(``Example.contexts``, see ``semoe.data.sources.openrag``) and answer from the first k of
them in the file's order. :class:`ProvidedContexts` serves them through the ``Retriever``
search interface, so a method that retrieves with the question (``single-retrieval``,
``reflection``) runs unchanged and does not know where its passages come from.
"""

from __future__ import annotations

from typing import Sequence

from semoe.data.schema import DataFormatError, Example
from semoe.retrieval.base import Hit, RetrievalError

# The files give no retrieval score that all of them share; hits keep the file's order.
PROVIDED_SCORE = 0.0


class ProvidedContexts:
    """``search(queries, k)`` over the contexts of ``examples``, keyed by question text.

    Raises DataFormatError when a question has no contexts or two questions with the same
    text have different contexts; a query that is not one of the questions (e.g. a triggered
    method's generated query) is a RetrievalError naming it."""

    corpus_key: str | None = None  # no corpus: the passages come with the questions

    def __init__(self, examples: Sequence[Example], dataset: str):
        self._by_question: dict[str, Example] = {}
        for ex in examples:
            if not ex.contexts:
                raise DataFormatError(
                    f"dataset {dataset!r}: question {ex.id!r} has no contexts (`ctxs` or `top_contexts`) to serve as "
                    f"its passages"
                )
            seen = self._by_question.setdefault(ex.question, ex)
            if seen.contexts != ex.contexts:
                raise DataFormatError(
                    f"dataset {dataset!r}: questions {seen.id!r} and {ex.id!r} have the same text but different "
                    f"contexts, so a search by question text cannot tell them apart"
                )

    def search(self, queries: Sequence[str], k: int) -> list[list[Hit]]:
        out = []
        for query in queries:
            ex = self._by_question.get(query)
            if ex is None:
                raise RetrievalError(
                    f"provided contexts answer only the questions themselves, not the query {query[:80]!r}: use a "
                    f"method that retrieves with the question"
                )
            out.append([Hit(p, PROVIDED_SCORE, rank) for rank, p in enumerate(ex.contexts[:k], 1)])
        return out

    def close(self) -> None:
        """Nothing to release (the ``Retriever`` interface's ``close``)."""
