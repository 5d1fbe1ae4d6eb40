"""Corpus → BM25 index in the artifact cache (or on an Elasticsearch cluster), reused
when the corpus content key and backend are unchanged."""

from __future__ import annotations

import functools
import time
from dataclasses import asdict, dataclass

from semoe.config import CorpusConfig, RetrievalConfig, SemoeConfig
from semoe.data import DataContext
from semoe.data.loading import corpus_key, iter_passages
from semoe.hashing import digest
from semoe.retrieval import RETRIEVERS
from semoe.retrieval.base import Retriever
from semoe.storage.artifacts import ArtifactCache
from semoe.storage.results import ResultStore, utcnow
from semoe.storage.rows import IndexRow


@dataclass
class IndexInfo:
    backend: str
    corpus_key: str
    index_dir: str
    reused: bool
    passages: int | None
    seconds: float
    skipped_rows: int | None = None  # malformed rows dropped under the corpus's skip_bad_rows

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def passages_per_s(self) -> float | None:
        return self.passages / self.seconds if self.passages is not None and self.seconds else None


def _index_dir(cache_root: str, backend: str, key: str, index_identity: dict | None = None):
    """``<backend>-<corpus key>``, plus a digest of the backend's index identity (e.g. a
    non-default analyzer), so indexes built with other settings live side by side."""

    suffix = f"-{digest(index_identity, 8)}" if index_identity else ""
    return ArtifactCache(cache_root).path("indexes", f"{backend}-{key}{suffix}")


@functools.lru_cache(maxsize=4)
def _open(backend: str, retrieval_json: str, cache_root: str, key: str) -> Retriever:
    cls = RETRIEVERS.get(backend)
    cfg = RetrievalConfig.model_validate_json(retrieval_json)
    identity = cls.Params(**cfg.options).index_identity()
    return cls(cfg, _index_dir(cache_root, backend, key, identity), key)


def open_retriever(cfg: SemoeConfig, key: str) -> Retriever:
    """One retriever per process and index (searchers are reused across tasks)."""
    return _open(cfg.retrieval.backend, cfg.retrieval.model_dump_json(), cfg.cache.root, key)


def build_index(cfg: SemoeConfig) -> IndexInfo:
    ctx = DataContext.of(cfg)
    key = corpus_key(cfg.corpus, ctx)
    retriever = open_retriever(cfg, key)
    if retriever.is_built():
        return IndexInfo(cfg.retrieval.backend, key, str(retriever.index_dir), True, None, 0.0)
    t0 = time.perf_counter()
    passages = iter_passages(cfg.corpus, ctx, progress=f"{cfg.retrieval.backend} index")
    stats = retriever.build(passages, total=None)
    return IndexInfo(
        cfg.retrieval.backend,
        key,
        str(retriever.index_dir),
        False,
        stats.get("passages"),
        time.perf_counter() - t0,
        passages.skipped_rows,
    )


def record_index(store_path: str, info: IndexInfo) -> None:
    """The ``indexes`` row of a fresh build (a reused index keeps the row of its build)."""

    row = IndexRow(
        corpus_key=info.corpus_key,
        backend=info.backend,
        passages=info.passages,
        seconds=info.seconds,
        passages_per_s=info.passages_per_s,
        location=info.index_dir,
        built_at=utcnow(),
        skipped_rows=info.skipped_rows or 0,
    )
    ResultStore(store_path).write_rows("indexes", [row])


def describe_corpus(corpus: CorpusConfig) -> str:
    return f"{corpus.format}:{corpus.path}" if corpus.path else corpus.format
