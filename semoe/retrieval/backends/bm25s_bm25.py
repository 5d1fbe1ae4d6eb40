"""In-memory BM25 with bm25s (https://github.com/xhluca/bm25s; Lù, 2024, "BM25S: Orders of
magnitude faster lexical search via eager sparse scoring"), FlashRAG's default BM25.

bm25s scores eagerly: at build time it stores the BM25 score of every (term, passage)
pair in a sparse matrix (bm25s builds, saves and loads it), so a query is a sum of a few
matrix columns. The sum and top-k are done here, over the passages in the query terms'
postings only: bm25s's own ``retrieve`` (numpy backend) fills a score array over the whole
corpus and runs ``argpartition`` on it, which costs a pass over every passage per query
and is slow on mostly-zero arrays (measured 7 ms a query at 50k passages), and it pads the
top-k with score-0 passages. The matrix lives in memory: 8 bytes per distinct (term,
passage) pair (float32 score + int32 row).

Terms come from semoe's analyzer (``semoe.retrieval.analysis``, the same as the tantivy
backend's), over title and text as one field. ``retrieval.options``: the analyzer plus
``k1``, ``b`` and bm25s's ``method``; all of them are computed into the stored scores, so
all are part of the index identity. Only passages that contain a query term are returned
(bm25s itself would pad the top-k with score-0 passages).

Layout of ``index_dir``: bm25s's saved arrays (``*.index.npy``, ``vocab.index.json``,
``params.index.json``), ``passages.jsonl`` with ``offsets.npy`` (byte offset of each
passage's line, so hits are read from disk, not held in memory) and ``manifest.json``,
written last; a build writes into a hidden sibling directory that replaces ``index_dir``
only when complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from array import array
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Literal

from pydantic import Field

from semoe.data.schema import Passage
from semoe.retrieval import RETRIEVERS
from semoe.retrieval.analysis import AnalyzerParams
from semoe.retrieval.base import Hit, RetrievalError, Retriever, build_lock

if TYPE_CHECKING:
    from semoe.config import RetrievalConfig

PASSAGES = "passages.jsonl"
OFFSETS = "offsets.npy"
FORMAT_VERSION = 1
# Postings above 1/DENSE_FRACTION of the passages are summed in a dense array instead of
# sorted (the break-even measured at 1M passages: ~250k postings).
DENSE_FRACTION = 4


class Bm25sParams(AnalyzerParams):
    """``retrieval.options`` of the bm25s backend: the analyzer and BM25's parameters."""

    k1: float = Field(1.2, gt=0, description="term-frequency saturation; 1.2 as tantivy and Elasticsearch (bm25s: 1.5)")
    b: float = Field(0.75, ge=0, le=1, description="length normalisation")
    # bm25s's BM25L/BM25+ add a per-query constant for absent terms, which the sum over
    # postings here does not; they are not offered.
    method: Literal["lucene", "robertson", "atire"] = Field(
        "lucene", description="bm25s's BM25 variant (Kamphuis et al., ECIR 2020)"
    )

    def index_identity(self) -> dict:
        # Scores are precomputed at build time: every setting decides what the index holds.
        return {"analyzer": self.analyzer_identity(), "k1": self.k1, "b": self.b, "method": self.method}


def _bm25s():
    try:
        import bm25s
    except ImportError:
        raise RetrievalError("retrieval.backend bm25s needs the bm25s package: pip install 'semoe[bm25s]'") from None
    return bm25s


@RETRIEVERS.register("bm25s", "in-memory BM25 (bm25s, precomputed sparse scores); RAM grows with the corpus")
class Bm25sRetriever(Retriever):
    """BM25 over title+text with bm25s; the score matrix is loaded into memory on first search."""

    Params = Bm25sParams

    def __init__(self, cfg: "RetrievalConfig", index_dir: Path, corpus_key: str):
        super().__init__(cfg, index_dir, corpus_key)
        self._analyzer = self.params.text_analyzer()
        self._model: Any = None  # bm25s.BM25 once loaded
        self._offsets: Any = None  # numpy int64 array, one offset per passage + end
        self._passages_fh = None

    def is_built(self) -> bool:
        m = self.manifest()
        return (
            isinstance(m, dict)
            and m.get("backend") == "bm25s"
            and m.get("corpus_key") == self.corpus_key
            and m.get("format_version") == FORMAT_VERSION
            and m.get("index") == self.params.index_identity()
        )

    def _terms(self, title: str, text: str) -> list[str]:
        # Analysed apart, so no term spans the end of the title and the start of the text.
        return self._analyzer.analyze(title) + self._analyzer.analyze(text)

    def build(self, passages: Iterable[Passage], total: int | None = None) -> dict:
        import numpy as np
        from tqdm import tqdm

        bm25s = _bm25s()

        parent = self.index_dir.parent
        parent.mkdir(parents=True, exist_ok=True)
        with build_lock(self.index_dir):
            self.close()
            self.manifest_path.unlink(missing_ok=True)
            for stale in parent.glob(f".{self.index_dir.name}.tmp-*"):
                shutil.rmtree(stale, ignore_errors=True)
            tmp = parent / f".{self.index_dir.name}.tmp-{os.getpid()}"
            tmp.mkdir()
            started = time.perf_counter()
            try:
                vocab: dict[str, int] = {}
                docs: list[array] = []  # term ids per passage; array('i') is 4 bytes a term
                offsets = array("q", [0])
                with open(tmp / PASSAGES, "wb") as out:
                    progress = tqdm(total=total, unit=" passages", unit_scale=True, desc="bm25s index", mininterval=1.0)
                    with progress:
                        for p in passages:
                            title, text = p.title or "", p.text or ""
                            terms = self._terms(title, text)
                            docs.append(array("i", [vocab.setdefault(t, len(vocab)) for t in terms]))
                            line = json.dumps({"id": str(p.id), "title": title, "text": text}, ensure_ascii=False)
                            offsets.append(offsets[-1] + out.write(line.encode("utf-8") + b"\n"))
                            progress.update(1)
                n = len(docs)
                if n:
                    model = bm25s.BM25(k1=self.params.k1, b=self.params.b, method=self.params.method)
                    model.index((docs, vocab), show_progress=False)
                    del docs
                    model.save(str(tmp), show_progress=False)
                np.save(tmp / OFFSETS, np.frombuffer(offsets, dtype=np.int64))
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            shutil.rmtree(self.index_dir, ignore_errors=True)
            os.rename(tmp, self.index_dir)
            seconds = round(time.perf_counter() - started, 3)
            manifest = {
                "backend": "bm25s",
                "corpus_key": self.corpus_key,
                "passages": n,
                "seconds": seconds,
                "format_version": FORMAT_VERSION,
                "index": self.params.index_identity(),
                "bm25s": bm25s.__version__,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            self.write_manifest(manifest)
        return {"passages": n, "seconds": seconds}

    def _load(self) -> None:
        if self._offsets is not None:
            return
        if not self.is_built():
            raise RetrievalError(
                f"no complete bm25s index for corpus {self.corpus_key} at {self.index_dir}; build it first"
            )
        import numpy as np

        bm25s = _bm25s()
        try:
            offsets = np.load(self.index_dir / OFFSETS)
            model = bm25s.BM25.load(str(self.index_dir), show_progress=False) if len(offsets) > 1 else None
            self._passages_fh = open(self.index_dir / PASSAGES, "rb")
        except (OSError, ValueError, KeyError) as e:
            raise RetrievalError(
                f"bm25s index at {self.index_dir} cannot be opened (delete it to rebuild): {e}"
            ) from None
        self._model, self._offsets = model, offsets

    def _passage(self, row: int) -> Passage:
        start, end = int(self._offsets[row]), int(self._offsets[row + 1])
        d = json.loads(os.pread(self._passages_fh.fileno(), end - start, start))
        return Passage(id=d["id"], title=d["title"], text=d["text"])

    def _top_k(self, term_ids: list[int], k: int) -> list[tuple[int, float]]:
        """(row, score) of the k best passages holding any of ``term_ids``, best first (ties:
        lower row first). Sums bm25s's precomputed columns; only passages in the postings
        are candidates, so a query costs its postings, not a pass over the corpus."""
        import numpy as np

        scores = self._model.scores
        data, indices, indptr, n_docs = scores["data"], scores["indices"], scores["indptr"], scores["num_docs"]
        spans = [(int(indptr[t]), int(indptr[t + 1])) for t in term_ids]
        postings = sum(b - a for a, b in spans)
        if postings * DENSE_FRACTION > n_docs:
            # Long postings: accumulating into one array over the corpus is cheaper than
            # sorting them (np.add.at beats fancy-index +=). The top-k is then taken among the
            # non-zero entries only: argpartition over an array of mostly equal zeros is
            # ~20x slower (measured 55-100 ms at 1M passages).
            acc = np.zeros(n_docs, dtype=np.float32)
            for a, b in spans:
                np.add.at(acc, indices[a:b], data[a:b])
            rows = np.flatnonzero(acc)
            sums = acc[rows]
        else:
            rows, inverse = np.unique(np.concatenate([indices[a:b] for a, b in spans]), return_inverse=True)
            sums = np.bincount(inverse, weights=np.concatenate([data[a:b] for a, b in spans]).astype(np.float64))
        if rows.size > k:
            keep = np.argpartition(-sums, k - 1)[:k]
            rows, sums = rows[keep], sums[keep]
        order = np.lexsort((rows, -sums))
        return [(int(rows[i]), float(sums[i])) for i in order if sums[i] > 0]

    def search(self, queries: list[str], k: int) -> list[list[Hit]]:
        self._load()
        if k < 1 or self._model is None:
            return [[] for _ in queries]
        vocab = self._model.vocab_dict
        # A query without known terms matches nothing (bm25s would rank every passage at 0).
        ids = [list(dict.fromkeys(vocab[t] for t in self._analyzer.analyze(q or "") if t in vocab)) for q in queries]

        def one(term_ids: list[int]) -> list[Hit]:
            if not term_ids:
                return []
            return [Hit(self._passage(r), s, rank) for rank, (r, s) in enumerate(self._top_k(term_ids, k), start=1)]

        return self.map_queries(ids, one)

    def close(self) -> None:
        self.close_pool()
        if self._passages_fh is not None:
            with contextlib.suppress(OSError):
                self._passages_fh.close()
        self._model = self._offsets = self._passages_fh = None
