"""Embedded BM25 with tantivy: nothing to install or run beside the pipeline.

Layout: ``index_dir`` is the tantivy index directory plus ``manifest.json``. A build
writes into a hidden sibling temp directory, renames it onto ``index_dir`` and only
then writes the manifest, so a build killed at any point is never taken as complete.

Queries never go through tantivy's query parser (free text from a question or an
LLM holds quotes, colons, parentheses, ``AND``...): they are split by the same
analyzer the fields are indexed with and turned into a flat disjunction of term
queries over title and text, i.e. what the parser makes of plain words, without its
syntax. BM25 uses tantivy's fixed parameters (k1=1.2, b=0.75).

Ties: corpus order. tantivy returns equal scores in index-layout order, which a
multi-threaded build changes from build to build; each passage's corpus position is a
fast field ``row``, and the top-k is cut by ``semoe.retrieval.base.top_k_in_corpus_order``
(the engine's top k+1, more while hits tie past the k-th; then score descending, lower row
first), so the hits do not depend on how the index happened to be built.

The analyzer (``retrieval.options``: stop words, stemmer, see ``semoe.retrieval.analysis``)
is registered as the fields' tokenizer and recorded in the manifest; an index whose
manifest names another analyzer is not complete for this one.

Speed: tantivy-py's ``Searcher.search`` scores a disjunction exhaustively, with or
without ``count`` (measured with 0.27: a rare term OR'ed with five common ones costs what
the five alone cost, so block-WAND does not prune), so a query costs about one step per
posting of its terms and grows with the corpus; dropping stop words removes the longest
posting lists. A batch is searched on ``search_threads`` threads: tantivy releases the
GIL while it searches.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import tantivy

from semoe.data.schema import Passage
from semoe.retrieval import RETRIEVERS
from semoe.retrieval.analysis import DEFAULT_TOKENIZER, AnalyzerParams
from semoe.retrieval.base import Hit, RetrievalError, Retriever, build_lock, top_k_in_corpus_order

if TYPE_CHECKING:
    from semoe.config import RetrievalConfig

# 2: the ``row`` fast field (corpus position, for the tie order); indexes without it are rebuilt.
SCHEMA_VERSION = 2
# Each commit flushes the writer's segments; without them the final merge of a 2M-passage
# build peaked at 1.6 GB RSS (0.64 GB with them), for no gain in speed.
COMMIT_EVERY = 100_000
SEARCH_FIELDS = ("title", "text")


def _schema(tokenizer_name: str, index_option: str = "freq") -> tantivy.Schema:
    # BM25 needs term frequencies and field norms, not positions (no phrase queries): "freq"
    # postings cut a 2M-row DPR build's CPU by 1.22x. Indexes built with positions score
    # identically, hence that change bumped no SCHEMA_VERSION.
    sb = tantivy.SchemaBuilder()
    sb.add_text_field("id", stored=True, tokenizer_name="raw")
    sb.add_text_field("title", stored=True, tokenizer_name=tokenizer_name, index_option=index_option)
    sb.add_text_field("text", stored=True, tokenizer_name=tokenizer_name, index_option=index_option)
    # A fast (columnar) field: the rows of a query's top k+1 are read in one call, without
    # loading the stored documents of hits that are then cut.
    sb.add_integer_field("row", fast=True)
    return sb.build()


class TantivyParams(AnalyzerParams):
    """``retrieval.options`` of the tantivy backend: the analyzer."""


@RETRIEVERS.register("tantivy", "embedded BM25 (tantivy), zero setup")
class TantivyRetriever(Retriever):
    """BM25 over title+text in an on-disk tantivy index inside the artifact cache."""

    Params = TantivyParams

    def __init__(self, cfg: "RetrievalConfig", index_dir: Path, corpus_key: str):
        super().__init__(cfg, index_dir, corpus_key)
        self._tokenizer = self.params.tokenizer_name()
        self._schema = _schema(self._tokenizer)
        # Queries are split by the analyzer the fields are indexed with, so query terms
        # are exactly the indexed terms.
        self._analyzer = self.params.text_analyzer()
        self._searcher: tantivy.Searcher | None = None

    def is_built(self) -> bool:
        m = self.manifest()
        return (
            isinstance(m, dict)
            and m.get("backend") == "tantivy"
            and m.get("corpus_key") == self.corpus_key
            and m.get("schema_version") == SCHEMA_VERSION
            # Manifests written before the analyzer was configurable have none: the default.
            and m.get("analyzer", {}) == self.params.analyzer_identity()
            and tantivy.Index.exists(str(self.index_dir))
        )

    def _register_tokenizer(self, index: tantivy.Index) -> None:
        """A custom analyzer lives in the process, not in the index: register it on every
        ``Index`` object before writing to (or parsing for) its fields."""
        if self._tokenizer != DEFAULT_TOKENIZER:
            index.register_tokenizer(self._tokenizer, self._analyzer)

    def _build_lock(self) -> contextlib.AbstractContextManager[None]:
        return build_lock(self.index_dir)

    def build(self, passages: Iterable[Passage], total: int | None = None) -> dict:
        from tqdm import tqdm

        parent = self.index_dir.parent
        parent.mkdir(parents=True, exist_ok=True)
        with self._build_lock():
            self._searcher = None
            self.manifest_path.unlink(missing_ok=True)
            for stale in parent.glob(f".{self.index_dir.name}.tmp-*"):
                shutil.rmtree(stale, ignore_errors=True)
            tmp = parent / f".{self.index_dir.name}.tmp-{os.getpid()}"
            tmp.mkdir()
            started = time.perf_counter()
            writer = None
            try:
                index = tantivy.Index(self._schema, path=str(tmp), reuse=False)
                self._register_tokenizer(index)
                writer = index.writer(self.cfg.writer_heap_mb * 1_000_000, 0)  # 0: a thread per core
                add, Document = writer.add_document, tantivy.Document
                n = 0
                # A bar by passages only when the count is known: a corpus stream shows its own,
                # by bytes of the file (semoe.data.loading.iter_passages).
                with tqdm(
                    total=total,
                    unit=" passages",
                    unit_scale=True,
                    desc="tantivy index",
                    mininterval=1.0,
                    disable=total is None,
                ) as progress:
                    for p in passages:
                        add(Document(id=str(p.id), title=p.title or "", text=p.text or "", row=n))
                        n += 1
                        if not n % COMMIT_EVERY:
                            writer.commit()
                            progress.update(COMMIT_EVERY)
                    progress.update(n % COMMIT_EVERY)
                writer.commit()
                writer.wait_merging_threads()
                del index
            except BaseException:
                self._discard(writer, tmp)
                raise
            shutil.rmtree(self.index_dir, ignore_errors=True)
            os.rename(tmp, self.index_dir)
            seconds = round(time.perf_counter() - started, 3)
            manifest = {
                "backend": "tantivy",
                "corpus_key": self.corpus_key,
                "passages": n,
                "seconds": seconds,
                "schema_version": SCHEMA_VERSION,
                "analyzer": self.params.analyzer_identity(),
                "tantivy": tantivy.__version__,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            self.write_manifest(manifest)
        return {"passages": n, "seconds": seconds}

    @staticmethod
    def _discard(writer: tantivy.IndexWriter | None, tmp: Path) -> None:
        """Stop the writer's indexing threads before deleting the directory they write to."""
        if writer is not None:
            with contextlib.suppress(Exception):
                writer.rollback()
            with contextlib.suppress(Exception):
                writer.wait_merging_threads()
        shutil.rmtree(tmp, ignore_errors=True)

    def _get_searcher(self) -> tantivy.Searcher:
        if self._searcher is None:
            if not self.is_built():
                raise RetrievalError(
                    f"no complete tantivy index for corpus {self.corpus_key} at {self.index_dir}; build it first"
                )
            try:
                index = tantivy.Index.open(str(self.index_dir))
                self._register_tokenizer(index)
                self._searcher = index.searcher()
            except (OSError, ValueError) as e:
                raise RetrievalError(
                    f"tantivy index at {self.index_dir} cannot be opened (delete it to rebuild): {e}"
                ) from None
        return self._searcher

    def _query(self, text: str) -> tantivy.Query | None:
        terms = list(dict.fromkeys(self._analyzer.analyze(text or "")))
        if not terms:
            return None
        return tantivy.Query.boolean_query(
            [(tantivy.Occur.Should, tantivy.Query.term_query(self._schema, f, t)) for t in terms for f in SEARCH_FIELDS]
        )

    def _top(self, searcher: tantivy.Searcher, query: tantivy.Query, n: int) -> list[tuple[float, tantivy.DocAddress]]:
        """tantivy's best n hits as (score, address); equal scores in layout order."""
        try:
            return searcher.search(query, n, count=False).hits
        except ValueError as e:
            raise RetrievalError(f"tantivy search in {self.index_dir} failed: {e}") from None

    @staticmethod
    def _rows(searcher: tantivy.Searcher, addresses: list[tantivy.DocAddress]) -> list[int]:
        return searcher.fast_field_values("row", addresses)

    def search(self, queries: list[str], k: int) -> list[list[Hit]]:
        searcher = self._get_searcher()
        if k < 1:
            return [[] for _ in queries]
        built = [self._query(text) for text in queries]  # the analyzer runs in Python: once, here

        def one(query: tantivy.Query | None) -> list[Hit]:
            if query is None:
                return []
            hits = []
            best = top_k_in_corpus_order(
                functools.partial(self._top, searcher, query), functools.partial(self._rows, searcher), k
            )
            for rank, (score, address) in enumerate(best, start=1):
                doc = searcher.doc(address)
                passage = Passage(
                    id=doc.get_first("id"), title=doc.get_first("title") or "", text=doc.get_first("text") or ""
                )
                hits.append(Hit(passage=passage, score=float(score), rank=rank))
            return hits

        return self.map_queries(built, one)

    def close(self) -> None:
        self.close_pool()
        self._searcher = None
