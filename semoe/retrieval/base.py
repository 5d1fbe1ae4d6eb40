"""The interface every retrieval backend implements.

A backend class is registered in ``semoe.retrieval.RETRIEVERS`` and constructed as
``cls(cfg: RetrievalConfig, index_dir: Path, corpus_key: str)``. ``index_dir`` is a
directory in the artifact cache owned by this corpus (embedded engines keep their
index there; server engines may keep only a manifest).

A backend's own settings come from ``retrieval.options``, validated by its ``Params``
model (unknown keys are an error). Settings that change what the index holds (the
analyzer, precomputed scores) are its ``index_identity``: they name the index directory
and are checked against the manifest, so an index built otherwise is never reused.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterable, Iterator, Sequence, TypeVar

from pydantic import BaseModel, ConfigDict

from semoe.data.schema import Passage
from semoe.storage.atomic import write_atomic

if TYPE_CHECKING:
    from semoe.config import RetrievalConfig


MANIFEST = "manifest.json"  # an embedded engine's record of a complete build
T = TypeVar("T")


class RetrievalError(RuntimeError):
    """The retrieval backend is unreachable or its index is missing/corrupt."""


@dataclass(frozen=True)
class Hit:
    passage: Passage
    score: float
    rank: int  # 1-based


def top_k_in_corpus_order(
    fetch: Callable[[int], Sequence[tuple[float, T]]], rows: Callable[[list[T]], Sequence[int]], k: int
) -> list[tuple[float, T]]:
    """The k best hits of an engine whose order among equal scores is not corpus order:
    ``[(score, payload)]``, score descending, then lower corpus row first.

    Why: an engine returns equal scores in index-layout order (segments, doc addresses),
    and a multi-threaded build lays segments out differently from build to build, so a tie
    at the cut-off would retrieve different passages from the same corpus, config and code
    (and the index, keyed by content, looks the same). The rule of every backend: score
    descending, then corpus order (row: the passage's position in the stream the index was
    built from, first passage 0); bm25s applies it in ``bm25s_bm25._best``, Elasticsearch by
    its sort.

    ``fetch(n)`` returns the engine's best n hits as ``(score, payload)``, score descending
    (ties in any order), fewer when fewer match; ``rows(payloads)`` their corpus rows, asked
    only when two of the hits that compete for the top k tie. fetch is asked for k+1; while
    the last hit ties with the k-th and the engine returned all n asked, n doubles. Exact:
    every hit scoring above the k-th score is in the engine's top-n for any n >= k, and the
    loop stops only once every hit tied with the k-th is in. Costs one hit more per query,
    and a repeated search only when more than one hit ties past the k-th.
    """
    if k < 1:
        return []
    n = k + 1
    found = fetch(n)
    while len(found) == n and found[-1][0] == found[k - 1][0]:
        n *= 2
        found = fetch(n)
    if all(a[0] != b[0] for a, b in zip(found[:k], found[1:])):
        return list(found[:k])  # no tie: the engine's order is the rule's
    keyed = sorted(zip(found, rows([payload for _, payload in found])), key=lambda hit: (-hit[0][0], hit[1]))
    return [hit for hit, _ in keyed[:k]]


@contextlib.contextmanager
def build_lock(index_dir: Path) -> Iterator[None]:
    """Exclusive lock beside ``index_dir``: two processes building the same index would
    delete each other's work."""
    lock_path = index_dir.parent / f".{index_dir.name}.lock"
    with open(lock_path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class NoParams(BaseModel):
    """A backend without options: ``retrieval.options`` must be empty."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def index_identity(self) -> dict:
        return {}


class Retriever(ABC):
    Params: ClassVar[type[BaseModel]] = NoParams
    """The backend's ``retrieval.options`` model; its ``index_identity()`` is the dict of
    settings that change what the index holds ({} when none)."""

    def __init__(self, cfg: "RetrievalConfig", index_dir: Path, corpus_key: str):
        self.cfg = cfg
        self.index_dir = Path(index_dir)
        self.corpus_key = corpus_key
        self.params = self.Params(**cfg.options)
        self._pool = None  # ThreadPoolExecutor of batch searches, made on first use

    @property
    def manifest_path(self) -> Path:
        """Where an embedded engine records a complete build (written last, atomically)."""
        return self.index_dir / MANIFEST

    def manifest(self) -> dict | None:
        try:
            return json.loads(self.manifest_path.read_text())
        except (OSError, ValueError):
            return None

    def write_manifest(self, manifest: dict) -> None:
        """Mark the build complete: the manifest is written last, atomically."""
        write_atomic(self.manifest_path, json.dumps(manifest, indent=2))

    def map_queries(self, items: list, one: Callable[[Any], list[Hit]]) -> list[list[Hit]]:
        """``[one(item) for item in items]`` on ``search_threads`` threads (the engines release
        the GIL while they search). Each query is searched on its own, so threads change the
        speed, never the hits; a few queries per task, since a future per query costs about
        as much as a rare-term search."""
        threads = self.search_threads
        if threads <= 1 or len(items) <= 1:
            return [one(x) for x in items]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(threads, thread_name_prefix=f"semoe-{type(self).__name__}")
        size = max(1, len(items) // (threads * 8))
        chunks = [items[i : i + size] for i in range(0, len(items), size)]
        return [hits for chunk in self._pool.map(lambda c: [one(x) for x in c], chunks) for hits in chunk]

    def close_pool(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    @property
    def search_threads(self) -> int:
        """Threads for one batch of queries: ``retrieval.search_threads``, else the CPU
        cores this process may run on."""
        if self.cfg.search_threads:
            return self.cfg.search_threads
        affinity = getattr(os, "sched_getaffinity", None)  # Linux; elsewhere all cores
        return len(affinity(0)) if affinity else os.cpu_count() or 1

    @abstractmethod
    def is_built(self) -> bool:
        """True when a complete index for ``corpus_key`` exists (safe to skip indexing)."""

    @abstractmethod
    def build(self, passages: Iterable[Passage], total: int | None = None) -> dict:
        """Index a stream of passages (never materialised in memory); returns stats
        ``{"passages": n, "seconds": s}``. Must leave no half-built index marked complete."""

    @abstractmethod
    def search(self, queries: list[str], k: int) -> list[list[Hit]]:
        """Top-k BM25 hits for each query, best first: score descending, then corpus order
        (the passage's position in the stream the index was built from; see
        :func:`top_k_in_corpus_order`), so equal scores never depend on the index layout."""

    def close(self) -> None:  # noqa: B027 - optional hook; most backends hold nothing to release
        """Release open handles (index readers, clients); the default holds none."""
