"""In-memory BM25 with bm25s (https://github.com/xhluca/bm25s; Lù, 2024, "BM25S: Orders of
magnitude faster lexical search via eager sparse scoring"), FlashRAG's default BM25.

bm25s scores eagerly: at build time it stores the BM25 score of every (term, passage)
pair in a sparse matrix (bm25s builds, saves and loads it; each term's column holds its
passages in ascending order), so a query is a sum of a few matrix columns. The sum and
top-k are done here (``ScoreMatrix.top_k``), not by bm25s's own ``retrieve`` (numpy
backend), which fills a score array over the whole corpus and runs ``argpartition`` on
it (measured 7 ms a query at 50k passages) and pads the top-k with score-0 passages.

The top-k is exact and pruned with MaxScore (Turtle & Flood, 1995): a first lower bound θ
of the k-th best score from the rarest terms' best passages makes the terms whose maximum
scores sum below θ non-essential; only the other terms' postings are read, and the
non-essential scores of the passages that can still reach θ are found by binary search. So
a query no longer pays the long postings of its common terms; hits and scores equal an
exhaustive sum bit for bit (float64, one fixed order; ``tests/retrieval/
test_bm25s_maxscore.py``). Memory: 8 bytes per distinct (term, passage) pair (float32
score + int32 row), 4 bytes per term (its maximum score) and 8 bytes per passage for each
search thread (the accumulator of a query's essential postings).

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
import threading
import time
from array import array
from dataclasses import dataclass
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
# Relative margin of every pruning test: a bound and the scores it bounds are float64 sums
# in different orders, whose rounding differs by far less than this (~1e-15 relative for a
# few dozen terms), so nothing is pruned that could reach θ.
SLACK = 1e-9
# The first θ scores at most this many rows of each of the rarest terms (those with the
# highest scores in the term's own column; at least k).
SEED_ROWS = 1024
# Columns checked (and sorted, if needed) at load a chunk of this many postings at a time,
# so the check never holds a temporary array the size of the matrix.
CHECK_CHUNK = 1 << 24


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


@dataclass(frozen=True)
class TopKStats:
    """What one query cost: ``postings`` is what an exhaustive scorer reads (the query
    terms' postings); MaxScore reads ``essential_postings`` of them and looks up ``scored``
    rows (``seed`` for the first θ, then the candidates left after the upper-bound test)."""

    terms: int
    essential: int
    postings: int
    essential_postings: int
    seed: int
    candidates: int
    scored: int


class ScoreMatrix:
    """bm25s's precomputed scores as a CSC matrix (one column of (row, score) postings per
    term, rows ascending within a column) with each term's maximum score, and an exact top-k
    over it with MaxScore dynamic pruning (Turtle & Flood, 1995, "Query evaluation:
    strategies and optimizations"; the idea behind Lucene's MaxScore and WAND), vectorised
    with numpy.

    ``data`` float32 scores, ``indices`` rows, ``indptr`` (terms + 1) column starts, as bm25s
    saves them; ``num_docs`` rows. Raises ``RetrievalError`` for a matrix MaxScore cannot be
    exact on: a negative score, or a row twice in one column.
    """

    def __init__(self, data, indices, indptr, num_docs: int):
        import numpy as np

        self.data, self.indices, self.indptr = data, indices, np.asarray(indptr, dtype=np.int64)
        self.num_docs = int(num_docs)
        self._local = threading.local()  # each search thread's accumulator
        self._check_and_sort_columns()
        lengths = np.diff(self.indptr)
        self.max_scores = np.zeros(len(lengths), dtype=data.dtype)
        filled = lengths > 0
        if filled.any():  # reduceat over the non-empty columns only: an empty one has no max
            self.max_scores[filled] = np.maximum.reduceat(data, self.indptr[:-1][filled])

    def _check_and_sort_columns(self) -> None:
        """bm25s builds its columns with rows ascending (a sort by (term, row)); sorts any
        column that is not, in chunks of whole columns."""
        import numpy as np

        indptr, n_terms = self.indptr, len(self.indptr) - 1
        first = 0
        while first < n_terms:
            last = max(first + 1, int(np.searchsorted(indptr, indptr[first] + CHECK_CHUNK, side="right")) - 1)
            last = min(last, n_terms)
            a, b = int(indptr[first]), int(indptr[last])
            if b > a:
                rows, scores = self.indices[a:b], self.data[a:b]
                if scores.min() < 0:
                    raise RetrievalError("bm25s scores are negative: MaxScore needs scores ≥ 0")
                starts = indptr[first + 1 : last] - a
                starts = starts[(starts > 0) & (starts < b - a)]  # column starts inside the chunk
                if (_row_steps(rows, starts) <= 0).any():
                    col = np.repeat(np.arange(last - first), np.diff(indptr[first : last + 1]))
                    order = np.lexsort((rows, col))
                    if not self.indices.flags.writeable or not self.data.flags.writeable:
                        self.indices, self.data = self.indices.copy(), self.data.copy()
                    self.indices[a:b], self.data[a:b] = rows[order], scores[order]
                    if (_row_steps(self.indices[a:b], starts) == 0).any():
                        raise RetrievalError("bm25s score matrix holds a row twice in one term's column")
            first = last

    def top_k(self, term_ids, k: int) -> tuple[list[tuple[int, float]], TopKStats]:
        """The k best rows for a query: ``[(row, score)]``, score descending then lower row
        first, only rows with score > 0 (fewer than k when fewer match), and what it cost.

        A row's score is the sum of its query terms' scores (each term once, however often
        the query repeats it) in float64, added in one fixed order: the terms by maximum score
        descending, then by term id. Every row is summed that way whatever decides it, so the
        scores equal an exhaustive sum in that order bit for bit.

        MaxScore: θ, a lower bound of the k-th best score, is the k-th best full score among
        the best rows of the rarest terms. The longest run of lowest-maximum terms whose
        maxima sum below θ is *non-essential*: a row holding only those terms scores below θ
        and cannot be a hit, so candidates are the rows of the other (essential) terms'
        postings only. A candidate whose partial score plus the maxima of the terms not yet
        added stays below θ is dropped before each non-essential term is looked up (by binary
        search in its row-sorted postings); the survivors' scores are complete. The result is
        the exhaustive top-k.
        """
        import numpy as np

        terms = np.unique(np.asarray(term_ids, dtype=np.int64))
        terms = terms[self.indptr[terms + 1] > self.indptr[terms]]
        maxima = self.max_scores[terms].astype(np.float64)
        order = np.lexsort((terms, -maxima))  # the summation order
        terms, maxima = terms[order], maxima[order]
        columns = [(self.indices[a:b], self.data[a:b]) for a, b in zip(self.indptr[terms], self.indptr[terms + 1])]
        postings = sum(len(rows) for rows, _ in columns)
        if k < 1 or not columns:
            return [], TopKStats(len(columns), 0, postings, 0, 0, 0, 0)

        seed = self._seed_rows(columns, k)
        theta = 0.0
        if seed.size >= k:
            theta = float(np.partition(self._scores(columns, seed), seed.size - k)[seed.size - k])
        # still[j]: the most that terms j, j+1, ... can add to a row's score
        still = np.append(np.cumsum(maxima[::-1])[::-1], 0.0)
        essential = 1
        while essential < len(columns) and not _below(still[essential], theta):
            essential += 1
        essential_postings = sum(len(rows) for rows, _ in columns[:essential])

        rows, sums = self._partial_sums(columns[:essential], still[essential], theta)
        candidates = rows.size
        for j in range(essential, len(columns)):
            if rows.size > k:
                # A partial score only grows as terms are added: the k-th best one is a
                # lower bound of the k-th best score too.
                theta = max(theta, float(np.partition(sums, rows.size - k)[rows.size - k]))
            keep = ~_below(sums + still[j], theta)
            rows, sums = rows[keep], sums[keep]
            sums = sums + self._lookup(columns[j], rows)
        hits = [(r, s) for r, s in _best(rows, sums, k) if s > 0]
        stats = TopKStats(len(columns), essential, postings, essential_postings, seed.size, candidates, rows.size)
        return hits, stats

    def _seed_rows(self, columns, k: int):
        """Distinct rows for the first θ: the best rows (by their own score) of the rarest
        terms, rarest first, until at least k or every term is taken."""
        import numpy as np

        cap = max(SEED_ROWS, k)
        picked, seen = [], np.empty(0, dtype=np.int64)
        for i in sorted(range(len(columns)), key=lambda i: len(columns[i][0])):
            rows, scores = columns[i]
            if len(rows) > cap:
                rows = rows[np.argpartition(scores, len(rows) - cap)[len(rows) - cap :]]
            picked.append(rows)
            seen = _distinct(np.concatenate(picked))
            if seen.size >= k:
                break
        return seen

    def _partial_sums(self, columns, still: float, theta: float):
        """(rows ascending, float64 sums over ``columns`` in their order) of the rows in
        ``columns``' postings that can still reach θ with ``still`` more."""
        import numpy as np

        if len(columns) == 1:
            rows, sums = columns[0][0], columns[0][1].astype(np.float64)
            keep = ~_below(sums + still, theta)
            return rows[keep], sums[keep]
        # A dense accumulator over the passages, kept per thread and left all zeros:
        # scattering the postings costs their length, where sorting them costs more.
        acc = getattr(self._local, "acc", None)
        if acc is None:
            acc = self._local.acc = np.zeros(self.num_docs, dtype=np.float64)
        touched = np.concatenate([r for r, _ in columns])
        try:
            for col_rows, scores in columns:  # rows are distinct within a column
                np.put(acc, col_rows, acc.take(col_rows) + scores)
            rows = _distinct(touched[~_below(acc.take(touched) + still, theta)])
            return rows, acc.take(rows)
        finally:
            np.put(acc, touched, 0)

    @staticmethod
    def _lookup(column, rows):
        """The column's scores of ``rows`` (ascending; 0 where the term is absent)."""
        import numpy as np

        col_rows, scores = column
        at = np.minimum(np.searchsorted(col_rows, rows), len(col_rows) - 1)
        return np.where(col_rows.take(at) == rows, scores.take(at), 0)

    def _scores(self, columns, rows):
        """Full float64 scores of ``rows`` (ascending), the columns' scores added in order."""
        import numpy as np

        total = np.zeros(rows.size, dtype=np.float64)
        for column in columns:
            total += self._lookup(column, rows)
        return total


def _row_steps(rows, starts):
    """Differences of consecutive ``rows`` of a chunk of columns; 1 where a column starts
    (``starts``: offsets of the chunk's column starts after its first), whose row may be lower."""
    import numpy as np

    step = np.diff(rows.astype(np.int64))
    step[starts - 1] = 1
    return step


def _distinct(rows):
    """``rows`` sorted, each once (``np.unique`` is ~50x slower on int32 rows in numpy 2.4)."""
    import numpy as np

    rows = np.sort(rows)
    return rows[np.concatenate(([True], rows[1:] != rows[:-1]))]


def _below(bound, theta: float):
    """``bound`` is certainly below θ: with θ = 0 nothing is."""
    return bound * (1 + SLACK) < theta


def _best(rows, scores, k: int) -> list[tuple[int, float]]:
    """The k best (row, score), score descending, then lower row first."""
    import numpy as np

    if rows.size > k:
        # The k-th best score decides; every row tied with it competes on its row number.
        kth = np.partition(scores, rows.size - k)[rows.size - k]
        keep = scores >= kth
        rows, scores = rows[keep], scores[keep]
    order = np.lexsort((rows, -scores))[:k]
    return [(int(rows[i]), float(scores[i])) for i in order]


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
        self._vocab: dict[str, int] = {}  # term -> column, once loaded
        self._matrix: ScoreMatrix | None = None  # None for an empty corpus
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
        if model is not None:
            m = model.scores
            try:
                self._matrix = ScoreMatrix(m["data"], m["indices"], m["indptr"], m["num_docs"])
            except RetrievalError as e:
                raise RetrievalError(f"bm25s index at {self.index_dir}: {e}") from None
            self._vocab = model.vocab_dict
        self._offsets = offsets

    def _passage(self, row: int) -> Passage:
        start, end = int(self._offsets[row]), int(self._offsets[row + 1])
        d = json.loads(os.pread(self._passages_fh.fileno(), end - start, start))
        return Passage(id=d["id"], title=d["title"], text=d["text"])

    def search(self, queries: list[str], k: int) -> list[list[Hit]]:
        self._load()
        matrix = self._matrix
        if k < 1 or matrix is None:
            return [[] for _ in queries]
        vocab = self._vocab
        # A query without known terms matches nothing (bm25s would rank every passage at 0).
        ids = [[vocab[t] for t in self._analyzer.analyze(q or "") if t in vocab] for q in queries]

        def one(term_ids: list[int]) -> list[Hit]:
            hits, _ = matrix.top_k(term_ids, k)
            return [Hit(self._passage(r), s, rank) for rank, (r, s) in enumerate(hits, start=1)]

        return self.map_queries(ids, one)

    def close(self) -> None:
        self.close_pool()
        if self._passages_fh is not None:
            with contextlib.suppress(OSError):
                self._passages_fh.close()
        self._matrix = self._offsets = self._passages_fh = None
        self._vocab = {}
