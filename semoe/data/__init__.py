"""Datasets (questions) and corpora (passages), registered by name.

``DATASETS``: name → ``loader(cfg: DatasetConfig, ctx: DataContext) -> list[Example]``.
``CORPORA``: name → ``reader(cfg: CorpusConfig, ctx: DataContext) -> Iterator[Passage | SkippedRow]``
(streaming; a :class:`~semoe.data.schema.SkippedRow` stands for a malformed row dropped under
``skip_bad_rows``, which :func:`~semoe.data.loading.iter_passages` counts and filters out).
``PARAGRAPHS``: dataset name → ``paragraphs(rec: Record) -> Iterator[tuple[str, str]]``, the
(title, text) paragraphs one record of that dataset's file carries, which the
``dataset-contexts`` corpus indexes (``corpus.dataset`` names the format). A dataset format
that carries paragraphs registers here under its dataset name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from semoe.registry import Registry

if TYPE_CHECKING:
    from semoe.config import SemoeConfig, SyntheticConfig

DATASETS: Registry = Registry("dataset", "semoe.data.sources")
CORPORA: Registry = Registry("corpus format", "semoe.data.sources")
PARAGRAPHS: Registry = Registry("dataset format with paragraphs", "semoe.data.sources")
# The paragraphs dataset-contexts reads when corpus.dataset is not set: HotpotQA/2Wiki
# ``context`` or PopQA's ``paragraphs``, whichever the record has.
DEFAULT_PARAGRAPHS = "hotpotqa"


@dataclass(frozen=True)
class DataContext:
    """What a loader may need beyond its own config section."""

    synthetic: "SyntheticConfig"

    @classmethod
    def of(cls, cfg: "SemoeConfig") -> "DataContext":
        return cls(synthetic=cfg.synthetic)
