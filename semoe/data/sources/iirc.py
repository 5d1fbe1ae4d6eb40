"""IIRC (Ferguson et al., 2020; allenai.org/data/iirc), the DRAGIN paper's fourth dataset: a
list of Wikipedia passages, each with the questions asked about it::

    [{"pid", "title", "text", "links": [{"indices", "target"}],
      "questions": [{"qid", "question", "question_links",
                     "answer": {"type": "span" | "value" | "binary" | "none", ...},
                     "context": [{"passage": "main" | <linked title>, "text", "indices"}]}]}]

Answers by ``answer.type``, as IIRC's baseline (github.com/jferguson144/IIRC-baseline,
``make_drop_style.py``), DRAGIN (``src/data/iirc.py``) and IRCoT (``process_iirc.py``) read them:

- ``span``: the text of every ``answer_spans`` entry, each an accepted answer (DRAGIN's reading;
  IIRC's DROP-style scorer would require all spans of a multi-span answer together);
- ``value``: ``answer_value`` alone. The official scorer compares it as a DROP number, so the
  ``answer_unit`` ("years") is not part of the gold; it is kept in ``Example.meta``;
- ``binary``: ``answer_value``, "yes" or "no";
- ``none`` (unanswerable): skipped, as DRAGIN and IRCoT do; the count is logged. The baseline
  keeps them with an empty gold, which EM/F1 over answer strings cannot score.

The type is ``answer.type``; the gold titles are the passage's own title and every linked
article its annotated context comes from. As a corpus (``dataset-contexts`` with
``dataset: iirc``) the file gives each main passage whole and each annotated context snippet of
a linked article, under that article's title (the full linked articles are IIRC's separate
``context_articles.json``).
"""

from __future__ import annotations

import logging
from typing import Iterator

from semoe.config import DatasetConfig
from semoe.data import DATASETS, PARAGRAPHS, DataContext
from semoe.data.loading import Record
from semoe.data.schema import Example
from semoe.data.sources.qa_datasets import dataset_records, make_example

log = logging.getLogger(__name__)

MAIN = "main"  # context[].passage of a snippet from the question's own passage


def _questions(rec: Record) -> Iterator[Record]:
    for j, question in enumerate(rec.json_list("questions")):
        yield rec.child(f"questions[{j}]", question)


def _linked_contexts(question: Record) -> Iterator[Record]:
    """The annotated context snippets from linked articles (not the question's own passage)."""
    for j, context in enumerate(question.json_list("context")):
        entry = question.child(f"context[{j}]", context)
        if entry.text("passage") != MAIN:
            yield entry


def _answers(question: Record) -> tuple[str, list] | None:
    """(type, answers) of one question; None for an unanswerable one."""
    answer = question.child("answer", question.req("answer"))
    kind = answer.text("type")
    if kind == "none":
        return None
    if kind == "span":
        spans = answer.json_list("answer_spans")
        return kind, [answer.child(f"answer_spans[{j}]", s).text("text") for j, s in enumerate(spans)]
    if kind in ("value", "binary"):
        return kind, [answer.req("answer_value")]
    raise answer.error(f"unknown answer type {kind!r} (expected span, value, binary or none)")


@DATASETS.register("iirc", "IIRC dev.json/train.json: passages with their questions (unanswerable ones skipped)")
def load_iirc(cfg: DatasetConfig, ctx: DataContext) -> list[Example]:
    examples, unanswerable = [], 0
    for rec in dataset_records(cfg):
        title = rec.text("title")
        for question in _questions(rec):
            typed = _answers(question)
            if typed is None:
                unanswerable += 1
                continue
            kind, answers = typed
            linked = [c.text("passage") for c in _linked_contexts(question)]
            examples.append(
                make_example(
                    question,
                    cfg,
                    id=question.req("qid"),
                    answers=answers,
                    type=kind,
                    gold_titles=[title, *linked],
                    meta={"pid": rec.get("pid"), "answer_unit": question.data["answer"].get("answer_unit")},
                )
            )
    if unanswerable:
        log.info("%s: skipped %d unanswerable questions (answer type 'none'), as DRAGIN does", cfg.path, unanswerable)
    return examples


@PARAGRAPHS.register("iirc")
def iirc_paragraphs(rec: Record) -> Iterator[tuple[str, str]]:
    """The passage itself, then the linked-article snippets its questions' contexts cite."""
    yield rec.text("title"), rec.text("text")
    for question in _questions(rec):
        for context in _linked_contexts(question):
            yield context.text("passage"), context.text("text")
