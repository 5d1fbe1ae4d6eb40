"""IRCoT / Adaptive-RAG processed JSONL, as a dataset and as a corpus of its paragraphs.

One question per line, as written by IRCoT's ``processing_scripts/process_*.py``
(github.com/StonyBrookNLP/ircot; Adaptive-RAG, github.com/starsuzi/Adaptive-RAG, ships the same
files for SQuAD, NQ, TriviaQA, MuSiQue, HotpotQA and 2Wiki)::

    {"question_id": ..., "question_text": ...,
     "answers_objects": [{"number": "", "date": {...}, "spans": ["gold", ...]}, ...],
     "contexts": [{"idx": 0, "title": ..., "paragraph_text": ..., "is_supporting": true}, ...],
     "pinned_contexts": [...]}                      # IIRC: the question's main passage

Answers are every ``spans`` entry (a DROP-style ``number`` where ``spans`` is empty) of every
answers object, in order: the first is the gold, the rest aliases. Gold titles are the titles of
the supporting contexts (``pinned_contexts`` included).
"""

from __future__ import annotations

from typing import Iterator

from semoe.config import DatasetConfig
from semoe.data import DATASETS, PARAGRAPHS, DataContext
from semoe.data.loading import Record
from semoe.data.schema import Example
from semoe.data.sources.qa_datasets import dataset_records, make_example


def _answers(rec: Record) -> list:
    answers: list = []
    for j, obj in enumerate(rec.json_list("answers_objects")):
        answer = rec.child(f"answers_objects[{j}]", obj)
        spans = answer.json_list("spans")
        answers += spans if spans else [answer.get("number")]
    return answers


def _contexts(rec: Record) -> list[Record]:
    """The pinned contexts, then the contexts, each checked to have its paragraph text."""
    out = []
    for key in ("pinned_contexts", "contexts"):
        for j, context in enumerate(rec.json_list(key)):
            entry = rec.child(f"{key}[{j}]", context)
            entry.req("paragraph_text")
            out.append(entry)
    return out


@DATASETS.register("ircot", "IRCoT / Adaptive-RAG JSONL: question_id, question_text, answers_objects, contexts")
def load_ircot(cfg: DatasetConfig, ctx: DataContext) -> list[Example]:
    return [
        make_example(
            rec,
            cfg,
            id=rec.req("question_id"),
            answers=_answers(rec),
            type=rec.get("type", ""),
            gold_titles=[c.get("title") for c in _contexts(rec) if c.get("is_supporting")],
            question_field="question_text",
        )
        for rec in dataset_records(cfg)
    ]


@PARAGRAPHS.register("ircot")
def ircot_paragraphs(rec: Record) -> Iterator[tuple[str, str]]:
    """Every context paragraph shown with the question, pinned ones first."""
    for c in _contexts(rec):
        yield c.text("title", ""), c.text("paragraph_text")
