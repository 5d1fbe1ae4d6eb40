"""StrategyQA (Geva et al., 2021; github.com/eladsegal/strategyqa), the yes/no dataset of the
DRAGIN paper, in both shapes it circulates in:

- the original ``strategyqa_train.json``: ``{qid, term, description, question, answer (bool),
  facts, decomposition, evidence}``;
- DRAGIN-style copies without ``evidence`` (``{qid, term, description, question, answer, facts,
  decomposition}``).

The answer is "yes"/"no" (DRAGIN scores StrategyQA on that word), the type "yes-no". Gold titles
come from the paragraph ids of the first annotator's ``evidence`` ("Title-3" → "Title"), as
DRAGIN's ``src/data/strategyqa.py`` reads it; the ids themselves, ``facts``, ``decomposition``,
``term`` and ``description`` are kept in ``Example.meta``.

StrategyQA is not a corpus format here: its ``facts`` are sentences the annotators wrote for each
question (DRAGIN uses them as the reasoning of its demonstrations), with no title and the answer's
reasoning in them, not passages to retrieve from. Its corpus is Wikipedia
(``strategyqa_train_paragraphs.json``, or any Wikipedia dump through ``dpr-tsv``/``jsonl``).
"""

from __future__ import annotations

from typing import Any, Iterator

from semoe.config import DatasetConfig
from semoe.data import DATASETS, DataContext
from semoe.data.loading import Record
from semoe.data.schema import Example
from semoe.data.sources.qa_datasets import dataset_records, make_example

# Evidence entries that are not paragraph ids: a reasoning step with no retrieval.
_NOT_PARAGRAPHS = {"operation", "no_evidence"}


def _paragraph_ids(rec: Record, value: Any) -> Iterator[str]:
    if isinstance(value, str):
        if value not in _NOT_PARAGRAPHS:
            yield value
    elif isinstance(value, list):
        for item in value:
            yield from _paragraph_ids(rec, item)
    else:
        raise rec.error(f"field 'evidence' holds {type(value).__name__} {value!r}, not paragraph ids")


def _title(paragraph_id: str) -> str:
    """StrategyQA's paragraph id is "<Wikipedia title>-<paragraph number>"."""
    title, sep, number = paragraph_id.rpartition("-")
    return title if sep and number.isdigit() else paragraph_id


@DATASETS.register("strategyqa", "StrategyQA JSON (strategyqa_train.json or DRAGIN's copy): yes/no answers")
def load_strategyqa(cfg: DatasetConfig, ctx: DataContext) -> list[Example]:
    examples = []
    for rec in dataset_records(cfg):
        answer = rec.req("answer")
        if not isinstance(answer, bool):
            raise rec.error(f"field 'answer' should be true or false, got {answer!r}")
        annotators = rec.json_list("evidence")
        evidence = list(dict.fromkeys(_paragraph_ids(rec, annotators[0]))) if annotators else []
        examples.append(
            make_example(
                rec,
                cfg,
                id=rec.req("qid"),
                answers=[answer],
                type="yes-no",
                gold_titles=[_title(p) for p in evidence],
                meta={
                    "term": rec.get("term"),
                    "description": rec.get("description"),
                    "facts": rec.json_list("facts") or None,
                    "decomposition": rec.json_list("decomposition") or None,
                    "evidence_paragraphs": evidence or None,
                },
            )
        )
    return examples
