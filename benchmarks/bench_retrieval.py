"""Indexing and query throughput of a retrieval backend on a synthetic corpus.

Passages are words drawn from a Zipf-distributed vocabulary (so, as in real text, a
few words occur in nearly every passage and most are rare); each query is
``--query-words`` words sampled from one random passage plus a question mark, and
the share of queries whose source passage comes back in the top k is printed as a
sanity check. Query speed depends strongly on the word distribution: with
``--distribution uniform`` (no very common words) queries run an order of magnitude
faster than on Zipf text, where most queries hold words found in nearly every passage.

    python benchmarks/bench_retrieval.py --passages 100000 --queries 2000 --k 3
    SEMOE_ES_URL=http://localhost:9200 python benchmarks/bench_retrieval.py --backend elasticsearch
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
import uuid
from itertools import accumulate
from pathlib import Path

from semoe.config import RetrievalConfig
from semoe.data.schema import Passage
from semoe.retrieval import RETRIEVERS


def make_vocab(rng: random.Random, size: int) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = {"".join(rng.choices(letters, k=rng.randint(2, 11))) for _ in range(size * 2)}
    return sorted(words)[:size] if len(words) >= size else sorted(words)


def make_passages(n: int, words_per_passage: int, vocab: list[str], seed: int, zipf: bool) -> list[Passage]:
    rng = random.Random(seed)
    shuffled = vocab[:]
    rng.shuffle(shuffled)
    cum = list(accumulate(1.0 / (r + 1) for r in range(len(shuffled)))) if zipf else None
    passages = []
    for i in range(n):
        title = " ".join(rng.choices(shuffled, cum_weights=cum, k=3)).title()
        text = " ".join(rng.choices(shuffled, cum_weights=cum, k=words_per_passage))
        passages.append(Passage(id=f"syn-{i}", title=title, text=text))
    return passages


def make_queries(passages: list[Passage], n: int, query_words: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed + 1)
    out = []
    for _ in range(n):
        p = passages[rng.randrange(len(passages))]
        words = p.text.split()
        out.append((p.id, " ".join(rng.sample(words, min(query_words, len(words)))) + "?"))
    return out


def encyclopedia_corpus(config_path: str, n_queries: int) -> tuple[list[Passage], list[tuple[str, str]]]:
    """The config's synthetic passages; queries are its questions (source = first gold passage)."""
    from semoe.config import load_config
    from semoe.data.encyclopedia import build_encyclopedia

    enc = build_encyclopedia(load_config(config_path).synthetic)
    questions = [(q.gold_passage_ids[0], q.question) for q in enc.questions]
    return enc.passages, [questions[i % len(questions)] for i in range(n_queries)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--passages", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--backend", default="tantivy", choices=RETRIEVERS.names())
    ap.add_argument("--words-per-passage", type=int, default=100, help="DPR passages are 100 words")
    ap.add_argument("--vocab", type=int, default=50_000)
    ap.add_argument("--distribution", choices=["zipf", "uniform"], default="zipf", help="word frequencies")
    ap.add_argument("--query-words", type=int, default=8)
    ap.add_argument("--batch", type=int, default=256, help="queries per search() call")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--config", help="benchmark on a config's synthetic encyclopedia instead (e.g. configs/demo.yaml): "
                    "its passages, and its questions repeated up to --queries as queries")
    args = ap.parse_args()

    t0 = time.perf_counter()
    if args.config:
        passages, queries = encyclopedia_corpus(args.config, args.queries)
        print(f"{args.config}: {len(passages):,} synthetic passages and {len(queries):,} question queries "
              f"in {time.perf_counter() - t0:.1f} s")
    else:
        vocab = make_vocab(random.Random(args.seed), args.vocab)
        passages = make_passages(args.passages, args.words_per_passage, vocab, args.seed, args.distribution == "zipf")
        queries = make_queries(passages, args.queries, args.query_words, args.seed)
        print(f"generated {len(passages):,} passages x {args.words_per_passage} words (vocab {len(vocab):,}, "
              f"{args.distribution}) and {len(queries):,} queries of {args.query_words} words "
              f"in {time.perf_counter() - t0:.1f} s")

    cfg = RetrievalConfig(backend=args.backend, es_index=f"semoe-bench-{uuid.uuid4().hex[:8]}")
    with tempfile.TemporaryDirectory(prefix="semoe-bench-") as tmp:
        key = f"bench{args.seed}"
        retriever = RETRIEVERS.get(args.backend)(cfg, Path(tmp) / f"{args.backend}-{key}", key)
        try:
            t0 = time.perf_counter()
            stats = retriever.build(iter(passages), total=len(passages))
            index_s = time.perf_counter() - t0
            n = stats["passages"]
            print(f"indexing: {n:,} passages in {index_s:.2f} s = {n / index_s:,.0f} passages/s")

            retriever.search([queries[0][1]], args.k)
            texts = [q for _, q in queries]
            found = 0
            t0 = time.perf_counter()
            for start in range(0, len(texts), args.batch):
                batch = texts[start : start + args.batch]
                for (source, _), hits in zip(queries[start : start + args.batch], retriever.search(batch, args.k)):
                    found += any(h.passage.id == source for h in hits)
            search_s = time.perf_counter() - t0
            print(f"search: {len(texts):,} queries (top-{args.k}, batches of {args.batch}) in {search_s:.2f} s "
                  f"= {len(texts) / search_s:,.0f} queries/s; source passage in top-{args.k}: {found / len(texts):.1%}")
        finally:
            if hasattr(retriever, "drop"):
                retriever.drop()
            retriever.close()


if __name__ == "__main__":
    main()
