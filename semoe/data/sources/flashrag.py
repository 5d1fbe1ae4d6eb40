"""FlashRAG's unified JSONL (github.com/RUC-NLPIR/FlashRAG; its 36 datasets on the HF hub as
``RUC-NLPIR/FlashRAG_datasets``), as a dataset and, where ``metadata`` keeps the question's
context paragraphs (HotpotQA, 2Wiki), as a corpus::

    {"id": "test_0", "question": ..., "golden_answers": ["gold", "alias", ...],
     "metadata": {"type": "bridge", "supporting_facts": {"title": [...], "sent_id": [...]},
                  "context": {"title": [...], "sentences": [[...], ...]}, ...}}

The first golden answer is the gold, the rest aliases (FlashRAG's EM/F1 take the best over
all of them, as semoe's do). ``metadata`` is kept whole in ``Example.meta``; its ``type`` is the
question type and its ``supporting_facts`` the gold titles, where the dataset has them.
"""

from __future__ import annotations

from typing import Iterator

from semoe.config import DatasetConfig
from semoe.data import DATASETS, PARAGRAPHS, DataContext
from semoe.data.loading import Record
from semoe.data.schema import Example
from semoe.data.sources.corpora import multihop_paragraphs
from semoe.data.sources.qa_datasets import as_list, dataset_records, make_example, supporting_titles


def _metadata(rec: Record) -> Record:
    return rec.child("metadata", rec.get("metadata", {}))


@DATASETS.register("flashrag", "FlashRAG unified JSONL: id, question, golden_answers, metadata")
def load_flashrag(cfg: DatasetConfig, ctx: DataContext) -> list[Example]:
    examples = []
    for rec in dataset_records(cfg):
        meta = _metadata(rec)
        examples.append(
            make_example(
                rec,
                cfg,
                id=rec.req("id"),
                answers=as_list(rec.req("golden_answers")),
                type=meta.get("type", ""),
                gold_titles=supporting_titles(meta),
                meta=meta.data,
            )
        )
    return examples


@PARAGRAPHS.register("flashrag")
def flashrag_paragraphs(rec: Record) -> Iterator[tuple[str, str]]:
    """The paragraphs in ``metadata.context`` (HotpotQA/2Wiki layout)."""
    return multihop_paragraphs(_metadata(rec))
