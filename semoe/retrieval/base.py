"""The interface every retrieval backend implements.

A backend class is registered in ``semoe.retrieval.RETRIEVERS`` and constructed as
``cls(cfg: RetrievalConfig, index_dir: Path, corpus_key: str)``. ``index_dir`` is a
directory in the artifact cache owned by this corpus (embedded engines keep their
index there; server engines may keep only a manifest).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from semoe.data.schema import Passage

if TYPE_CHECKING:
    from semoe.config import RetrievalConfig


class RetrievalError(RuntimeError):
    """The retrieval backend is unreachable or its index is missing/corrupt."""


@dataclass(frozen=True)
class Hit:
    passage: Passage
    score: float
    rank: int  # 1-based


class Retriever(ABC):
    def __init__(self, cfg: "RetrievalConfig", index_dir: Path, corpus_key: str):
        self.cfg = cfg
        self.index_dir = Path(index_dir)
        self.corpus_key = corpus_key

    @abstractmethod
    def is_built(self) -> bool:
        """True when a complete index for ``corpus_key`` exists (safe to skip indexing)."""

    @abstractmethod
    def build(self, passages: Iterable[Passage], total: int | None = None) -> dict:
        """Index a stream of passages (never materialised in memory); returns stats
        ``{"passages": n, "seconds": s}``. Must leave no half-built index marked complete."""

    @abstractmethod
    def search(self, queries: list[str], k: int) -> list[list[Hit]]:
        """Top-k BM25 hits for each query, best first."""

    def close(self) -> None:
        pass
