"""The embedded tantivy backend against a real on-disk index."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pytest

from semoe.config import RetrievalConfig
from semoe.data.schema import Passage
from semoe.retrieval import RETRIEVERS
from semoe.retrieval.base import RetrievalError
from tests.support.helpers import AWKWARD_QUERIES, CORPUS, TrackedPassages


def make(tmp_path: Path, key: str = "corpus-a", **cfg):
    return RETRIEVERS.get("tantivy")(RetrievalConfig(**cfg), tmp_path / "indexes" / f"tantivy-{key}", key)


@pytest.fixture()
def built(tmp_path):
    r = make(tmp_path)
    r.build(iter(CORPUS), total=len(CORPUS))
    yield r
    r.close()


def test_registered():
    assert "tantivy" in RETRIEVERS.names()


def test_not_built_then_built(tmp_path):
    r = make(tmp_path)
    assert not r.is_built()
    with pytest.raises(RetrievalError, match="build it first"):
        r.search(["anything"], 3)
    stats = r.build(iter(CORPUS))
    assert stats["passages"] == len(CORPUS) and stats["seconds"] >= 0
    assert r.is_built()
    manifest = json.loads((r.index_dir / "manifest.json").read_text())
    assert manifest["passages"] == len(CORPUS) and manifest["corpus_key"] == "corpus-a"
    assert make(tmp_path).is_built(), "a fresh instance (new process) sees the finished index"
    assert not make(tmp_path, key="corpus-b").is_built()


def test_rare_entity_at_rank_one(built):
    [hits] = built.search(["Where is Quorvanthe?"], 3)
    assert hits[0].passage == CORPUS[0]
    assert hits[0].rank == 1
    [hits] = built.search(["Which painter was born in 1871?"], 3)
    assert hits[0].passage.id == "p3"


def test_title_is_searched(built):
    [hits] = built.search(["Meridel"], 3)
    assert [h.passage.id for h in hits] == ["p2"]


def test_scores_descending_and_k_respected(built):
    queries = ["bell town market painter harbour", "market", "glass bells"]
    for k in (1, 2, 3, 5):
        for hits in built.search(queries, k):
            assert 0 < len(hits) <= k
            scores = [h.score for h in hits]
            assert scores == sorted(scores, reverse=True)
            assert [h.rank for h in hits] == list(range(1, len(hits) + 1))
    [many] = built.search(["bell town market painter harbour"], 100)
    assert len(many) == len({h.passage.id for h in many}) <= len(CORPUS)


def test_batch_keeps_query_order(built):
    results = built.search(["Meridel", "Quorvanthe", "Tobin Ashcroft"], 1)
    assert [r[0].passage.id for r in results] == ["p2", "p1", "p3"]


def test_awkward_queries_do_not_raise(built):
    results = built.search(AWKWARD_QUERIES, 3)
    assert len(results) == len(AWKWARD_QUERIES)
    by_query = dict(zip(AWKWARD_QUERIES, results))
    assert by_query['Who painted "Harbour Lights"?'][0].passage.id == "p5"
    assert by_query["title:Quorvanthe AND (river OR town)"][0].passage.id == "p1"
    assert by_query[""] == [] and by_query["   "] == []


def test_no_match_is_empty(built):
    assert built.search(["zyxwvut"], 3) == [[]]
    assert built.search([], 3) == []


def test_stale_partial_build_is_replaced(tmp_path):
    r = make(tmp_path)
    r.index_dir.parent.mkdir(parents=True)
    stale_tmp = r.index_dir.parent / f".{r.index_dir.name}.tmp-999999"
    stale_tmp.mkdir()
    (stale_tmp / "meta.json").write_text("half written")
    r.index_dir.mkdir()
    (r.index_dir / "garbage.idx").write_text("from a killed build")
    assert not r.is_built(), "an index directory without manifest is not complete"

    assert r.build(iter(CORPUS))["passages"] == len(CORPUS)
    assert r.is_built()
    assert not stale_tmp.exists()
    assert not (r.index_dir / "garbage.idx").exists()
    assert r.search(["Quorvanthe"], 1)[0][0].passage.id == "p1"


def test_failed_build_leaves_nothing_marked(tmp_path):
    def exploding() -> Iterator[Passage]:
        yield from CORPUS
        raise KeyboardInterrupt

    r = make(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        r.build(exploding())
    assert not r.is_built()
    assert not r.index_dir.exists()
    assert not list(r.index_dir.parent.glob(".*.tmp-*"))


def test_rebuild_replaces_previous_index(built):
    [hits] = built.search(["Quorvanthe"], 3)
    assert hits
    built.build(iter([Passage("n1", "Nobody", "An entirely different corpus.")]))
    assert built.search(["Quorvanthe"], 3) == [[]]
    assert built.search(["different corpus"], 3)[0][0].passage.id == "n1"


def test_builds_from_lazy_generator(tmp_path):
    """Streaming, not materialising: at no point are more than a handful of the
    20k passages alive at once (each is tracked until it is garbage)."""
    stream = TrackedPassages(20_000)
    gen = iter(stream)
    assert stream.produced == 0
    r = make(tmp_path, writer_heap_mb=16)
    stats = r.build(gen, total=None)
    assert stats["passages"] == stream.n == stream.produced
    assert stream.peak_alive <= 10, f"{stream.peak_alive} passages were held in memory at once"
    [hits] = r.search(["tok12345x"], 3)
    assert hits[0].passage.id == "g12345"


def test_indexes_built_with_positions_are_reused_and_score_the_same(tmp_path, monkeypatch):
    """Postings are built without positions (BM25 needs only frequencies); an index built
    before that, with positions, keeps being reused and gives the same hits and scores."""
    import numpy as np

    from semoe.retrieval.backends import tantivy_bm25

    rng = np.random.default_rng(0)
    vocab = [f"w{i}" for i in range(400)]
    zipf = 1 / np.arange(1, len(vocab) + 1)
    words = lambda n: " ".join(rng.choice(vocab, n, p=zipf / zipf.sum()))  # noqa: E731
    corpus = [Passage(id=f"d{i}", title=words(2), text=words(40)) for i in range(300)]
    queries = [words(6) for _ in range(40)]

    positions = tantivy_bm25._schema
    monkeypatch.setattr(tantivy_bm25, "_schema", lambda name: positions(name, index_option="position"))
    old = make(tmp_path / "old")
    old.build(iter(corpus))
    monkeypatch.undo()
    new = make(tmp_path / "new")
    new.build(iter(corpus))
    reopened = make(tmp_path / "old")
    assert reopened.is_built(), "an index built with positions stays complete"
    as_pairs = lambda hits: [[(h.passage.id, h.score) for h in q] for q in hits]  # noqa: E731
    expected = as_pairs(reopened.search(queries, 5))
    assert as_pairs(new.search(queries, 5)) == expected
    assert sum(len(q) for q in expected) > 150
    for r in (old, new, reopened):
        r.close()
