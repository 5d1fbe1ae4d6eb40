"""Indexing and query throughput of retrieval backends, side by side, on one synthetic corpus.

Passages are words drawn from a Zipf-distributed vocabulary (rank r has weight 1/r, as
word frequencies in real text); each query is ``--query-words`` words sampled from one
random passage plus a question mark, and the share of queries whose source passage comes
back in the top k is printed as a sanity check. Two regimes (``--head``):

- ``english`` (default, Wikipedia-like): the 33 most frequent vocabulary ranks are the
  English stop words (the, of, and, ...), as in real text, where they hold ~1/3 of the
  words; an English analyzer drops them, and with them the longest posting lists.
- ``none``: every word is a random string (the corpus of issue 13's first measurement):
  no stop word ever applies, and the most common query words occur in nearly every passage.

Variants (``--variant LABEL=BACKEND[:JSON options]``, repeatable) are built and searched
one after another in one process; every timing is printed as wall and process CPU time
(CPU counts all threads) with the ratio to the first variant, so a shared, noisy machine
still gives comparable CPU figures. Search runs ``--repeats`` times after a warm-up, for
each ``--threads`` value; the hits at every thread count are checked equal to 1 thread's.
Memory: the index on disk, and the resident memory the opened index adds (anonymous =
heap, e.g. bm25s's score matrix; file = mapped index pages, which the OS can evict).

    python benchmarks/bench_retrieval.py --passages 200000 --queries 2000
    python benchmarks/bench_retrieval.py --passages 1000000 --threads 1,2 --head none
    python benchmarks/bench_retrieval.py --variant es-like=tantivy \
        --variant en=tantivy:'{"stopwords":"english","stemmer":"english"}'
    SEMOE_ES_URL=http://localhost:9200 python benchmarks/bench_retrieval.py --variant es=elasticsearch
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Iterator

import numpy as np
from _common import load_average

from semoe.config import RetrievalConfig
from semoe.data.schema import Passage
from semoe.retrieval import RETRIEVERS

ENGLISH = '{"stopwords": "english", "stemmer": "english"}'
DEFAULT_VARIANTS = [
    "tantivy=tantivy",
    f"tantivy-en=tantivy:{ENGLISH}",
    f"bm25s-en=bm25s:{ENGLISH}",
]
# Lucene's English stop set, roughly by frequency in English text.
STOPWORDS_BY_FREQUENCY = (
    "the of and in to a is was for as on by with that at it an be this are or their not they no into "
    "there these will then if such but"
).split()
CHUNK = 10_000


def make_vocab(seed: int, size: int, head: str) -> np.ndarray:
    """``size`` distinct words, most frequent first (random strings; with ``head=english``
    the first ranks are the English stop words)."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    reserved = set(STOPWORDS_BY_FREQUENCY)
    words = sorted({"".join(rng.choices(letters, k=rng.randint(2, 11))) for _ in range(size * 2)} - reserved)
    rng.shuffle(words)
    head_words = STOPWORDS_BY_FREQUENCY if head == "english" else []
    return np.array(head_words + words[: size - len(head_words)])


class SyntheticCorpus:
    """Deterministic passages, generated in chunks; kept in memory after the first pass
    when ``keep`` (generating is slower than indexing), else generated on every pass."""

    def __init__(self, n: int, words_per_passage: int, vocab: np.ndarray, seed: int, zipf: bool, keep: bool = True):
        self.n, self.words, self.vocab, self.seed = n, words_per_passage, vocab, seed
        self.kept: dict[int, list[Passage]] | None = {} if keep else None
        weights = 1.0 / np.arange(1, len(vocab) + 1) if zipf else np.ones(len(vocab))
        self.cdf = np.cumsum(weights / weights.sum())

    def chunk(self, c: int) -> list[Passage]:
        if self.kept is not None and c in self.kept:
            return self.kept[c]
        rng = np.random.default_rng([self.seed, c])
        start, stop = c * CHUNK, min(self.n, (c + 1) * CHUNK)
        ranks = np.searchsorted(self.cdf, rng.random((stop - start, 3 + self.words)), side="right")
        words = self.vocab[np.minimum(ranks, len(self.vocab) - 1)]
        passages = [
            Passage(f"syn-{start + i}", " ".join(row[:3]).title(), " ".join(row[3:])) for i, row in enumerate(words)
        ]
        if self.kept is not None:
            self.kept[c] = passages
        return passages

    def __iter__(self) -> Iterator[Passage]:
        for c in range((self.n + CHUNK - 1) // CHUNK):
            yield from self.chunk(c)

    def queries(self, n: int, query_words: int, seed: int) -> list[tuple[str, str]]:
        """(source passage id, query) pairs: words sampled from random passages."""
        rng = random.Random(seed + 1)
        picks = sorted(rng.randrange(self.n) for _ in range(n))
        out = []
        for i in picks:
            c = i // CHUNK
            p = self.chunk(c)[i - c * CHUNK]
            words = p.text.split()
            out.append((p.id, " ".join(rng.sample(words, min(query_words, len(words)))) + "?"))
        rng.shuffle(out)
        return out


def encyclopedia_corpus(config_path: str, n_queries: int) -> tuple[list[Passage], list[tuple[str, str]]]:
    """The config's synthetic passages; queries are its questions (source = first gold passage)."""
    from semoe.config import load_config
    from semoe.data.encyclopedia import build_encyclopedia

    enc = build_encyclopedia(load_config(config_path).synthetic)
    questions = [(q.gold_passage_ids[0], q.question) for q in enc.questions]
    return enc.passages, [questions[i % len(questions)] for i in range(n_queries)]


def parse_variant(spec: str) -> tuple[str, str, dict]:
    label, _, rest = spec.partition("=")
    backend, _, options = (rest or label).partition(":")
    return label, backend, json.loads(options) if options else {}


def rss_kb() -> dict[str, int]:
    """RssAnon and RssFile of this process, in kB (Linux)."""
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(("RssAnon:", "RssFile:")):
                key, value = line.split(":")
                out[key] = int(value.split()[0])
    return out


def du_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


def timed(fn) -> tuple[float, float]:
    """(wall s, process CPU s) of fn()."""
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--passages", type=int, default=200_000)
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument(
        "--variant", action="append", help="LABEL=BACKEND[:JSON options]; default: " + ", ".join(DEFAULT_VARIANTS)
    )
    ap.add_argument("--threads", default="1,2", help="search threads to measure, comma-separated")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--words-per-passage", type=int, default=100, help="DPR passages are 100 words")
    ap.add_argument("--vocab", type=int, default=50_000)
    ap.add_argument("--head", choices=["english", "none"], default="english", help="most frequent words (see above)")
    ap.add_argument("--distribution", choices=["zipf", "uniform"], default="zipf", help="word frequencies")
    ap.add_argument("--query-words", type=int, default=10)
    ap.add_argument("--batch", type=int, default=256, help="queries per search() call")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--regenerate",
        action="store_true",
        help="generate passages on every pass instead of keeping them in memory (~1 GB per million)",
    )
    ap.add_argument(
        "--config",
        help="benchmark on a config's synthetic encyclopedia instead (e.g. configs/demo.yaml): "
        "its passages, and its questions repeated up to --queries as queries",
    )
    args = ap.parse_args()

    t0 = time.perf_counter()
    if args.config:
        passages, queries = encyclopedia_corpus(args.config, args.queries)
        regime = f"{args.config}: {len(passages):,} synthetic encyclopedia passages, question queries"
    else:
        vocab = make_vocab(args.seed, args.vocab, args.head)
        passages = SyntheticCorpus(
            args.passages, args.words_per_passage, vocab, args.seed, args.distribution == "zipf", not args.regenerate
        )
        queries = passages.queries(args.queries, args.query_words, args.seed)
        regime = (
            f"{args.passages:,} passages x {args.words_per_passage} words, {args.distribution} over "
            f"{len(vocab):,} words, head={args.head}; {len(queries):,} queries of {args.query_words} words"
        )
    print(
        f"regime: {regime}; top-{args.k}, batches of {args.batch}, {args.repeats} repeats after a warm-up "
        f"(queries generated in {time.perf_counter() - t0:.1f} s)",
        flush=True,
    )

    threads = [int(t) for t in args.threads.split(",")]
    texts = [q for _, q in queries]
    rows = []
    with tempfile.TemporaryDirectory(prefix="semoe-bench-") as tmp:
        for spec in args.variant or DEFAULT_VARIANTS:
            label, backend, options = parse_variant(spec)
            cfg = RetrievalConfig(backend=backend, options=options, es_index=f"semoe-bench-{uuid.uuid4().hex[:8]}")
            index_dir = Path(tmp) / label
            builder = RETRIEVERS.get(backend)(cfg, index_dir, "bench")
            try:
                stats = {}
                build_wall, build_cpu = timed(lambda b=builder, s=stats: s.update(b.build(iter(passages), total=None)))
                disk = du_mb(index_dir) if index_dir.exists() else float("nan")
                builder.close()
                peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                print(
                    f"{label}: indexed {stats['passages']:,} passages in {build_wall:.1f} s wall, "
                    f"{build_cpu:.1f} s CPU; {disk:,.0f} MB on disk; process peak RSS so far {peak:,.0f} MB",
                    flush=True,
                )
                reference = None
                for n_threads in threads:
                    r = RETRIEVERS.get(backend)(
                        cfg.model_copy(update={"search_threads": n_threads}), index_dir, "bench"
                    )
                    before = rss_kb()

                    def run(qs=texts, r=r):
                        return [
                            h for s in range(0, len(qs), args.batch) for h in r.search(qs[s : s + args.batch], args.k)
                        ]

                    run(texts[: min(200, len(texts))])  # warm-up: opens the index, pages it in
                    after = rss_kb()
                    times, hits = [], None
                    for _ in range(args.repeats):
                        box = {}
                        times.append(timed(lambda b=box: b.update(h=run())))
                        hits = box["h"]
                    r.close()
                    got = [[(h.passage.id, round(h.score, 4)) for h in hs] for hs in hits]
                    same = "n/a" if reference is None else ("yes" if got == reference else "NO")
                    wall = statistics.median(t[0] for t in times)
                    cpu = statistics.median(t[1] for t in times)
                    found = sum(any(h.passage.id == src for h in hs) for (src, _), hs in zip(queries, hits)) / len(hits)
                    rows.append(
                        {
                            "variant": label,
                            "threads": n_threads,
                            "qps_wall": len(texts) / wall,
                            "qps_cpu": len(texts) / cpu,
                            "cpu_ms_per_query": 1000 * cpu / len(texts),
                            "index_s": build_wall,
                            "index_cpu_s": build_cpu,
                            "disk_mb": disk,
                            # Only the first opening of an index is a clean measurement.
                            "anon_mb": (after["RssAnon"] - before["RssAnon"]) / 1024 if reference is None else None,
                            "file_mb": (after["RssFile"] - before["RssFile"]) / 1024 if reference is None else None,
                            "found": found,
                            "same_as_1_thread": same,
                        }
                    )
                    reference = reference or got
                    print(
                        f"  {label} threads={n_threads}: {rows[-1]['qps_wall']:,.0f} q/s wall, "
                        f"{rows[-1]['qps_cpu']:,.0f} q/s CPU; same hits as 1 thread: {same}",
                        flush=True,
                    )
            finally:
                if hasattr(builder, "drop"):
                    builder.drop()
                builder.close()

    print(f"\n{regime}; top-{args.k}")
    head = (
        f"{'variant':<14}{'thr':>4}{'q/s wall':>10}{'q/s CPU':>10}{'ms CPU/q':>9}{'wall x':>8}{'CPU x':>7}"
        f"{'index s':>9}{'disk MB':>9}{'+anon MB':>9}{'+file MB':>9}{'found':>7}{'=1thr':>6}"
    )
    print(head)
    print("-" * len(head))
    for row in rows:
        base = next(b for b in rows if b["threads"] == row["threads"])
        print(
            f"{row['variant']:<14}{row['threads']:>4}{row['qps_wall']:>10,.0f}{row['qps_cpu']:>10,.0f}"
            f"{row['cpu_ms_per_query']:>9.2f}{row['qps_wall'] / base['qps_wall']:>8.2f}"
            f"{row['qps_cpu'] / base['qps_cpu']:>7.2f}{row['index_s']:>9.1f}{row['disk_mb']:>9,.0f}"
            f"{_mb(row['anon_mb'])}{_mb(row['file_mb'])}{row['found']:>7.1%}{row['same_as_1_thread']:>6}"
        )
    print(
        "x: ratio to the first variant at the same thread count (higher is faster). "
        "+anon/+file MB: resident memory the opened index added (first opening only)."
    )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"process peak RSS {peak:,.0f} MB; {load_average()}")


def _mb(value: float | None) -> str:
    return f"{'':>9}" if value is None else f"{value:>9,.0f}"


if __name__ == "__main__":
    main()
