"""The synthetic encyclopedia as a dataset (its questions) and a corpus (its passages)."""

from __future__ import annotations

import dataclasses
import functools
from typing import Iterator

from semoe.config import CorpusConfig, DatasetConfig, SyntheticConfig
from semoe.data import CORPORA, DATASETS, DataContext
from semoe.data.encyclopedia import Encyclopedia, build_encyclopedia
from semoe.data.schema import Example, Passage


@functools.lru_cache(maxsize=4)
def _encyclopedia(config_json: str) -> Encyclopedia:
    """Built once per config and process: the dataset and the corpus both ask for it."""
    return build_encyclopedia(SyntheticConfig.model_validate_json(config_json))


def encyclopedia_for(cfg: SyntheticConfig) -> Encyclopedia:
    return _encyclopedia(cfg.model_dump_json())


@DATASETS.register("synthetic", "questions over a deterministic encyclopedia of fictional entities")
def load_synthetic(cfg: DatasetConfig, ctx: DataContext) -> list[Example]:
    # Copies, so a caller that edits an example cannot change the cached encyclopedia.
    return [
        dataclasses.replace(
            ex,
            dataset=cfg.display_name,
            answers=list(ex.answers),
            gold_passage_ids=list(ex.gold_passage_ids),
            meta=dict(ex.meta),
        )
        for ex in encyclopedia_for(ctx.synthetic).questions
    ]


@CORPORA.register("synthetic", "passages of the synthetic encyclopedia (settings from the synthetic section)")
def read_synthetic(cfg: CorpusConfig, ctx: DataContext) -> Iterator[Passage]:
    yield from encyclopedia_for(ctx.synthetic).passages
